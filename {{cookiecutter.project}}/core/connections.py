"""Counts ASGI connections as they open and close, around the whole application,
and caps the long-lived ones of each worker process (Slots); each one counts
toward the worker's recycling (core.recycling).

HTTP exchanges are counted until their response ends, so streams are included;
an exchange whose response is an event stream (text/event-stream) counts as "sse"
from its response headers on. WebSockets count from the handshake's acceptance;
their messages are counted by direction, and their end by close code class: the
code the application closed with, else the one the client sent.
"""

import time

from django.conf import settings

from core import metrics, recycling

EVENT_STREAM = b"text/event-stream"
# Bound once: labels() takes a lock and a lookup, twice per request otherwise.
ACTIVE = {kind: metrics.CONNECTIONS.labels(kind) for kind in metrics.CONNECTION_TYPES}
DURATION = {
    kind: metrics.CONNECTION_DURATION.labels(kind) for kind in metrics.CONNECTION_TYPES
}
MESSAGES_IN = metrics.WEBSOCKET_MESSAGES.labels("in")
MESSAGES_OUT = metrics.WEBSOCKET_MESSAGES.labels("out")


def count_connections(application):
    async def counted(scope, receive, send):
        if scope["type"] == "http":
            recycling.count_request()
            await _http(application, scope, receive, send)
        elif scope["type"] == "websocket":
            recycling.count_request()
            await _websocket(application, scope, receive, send)
        else:
            await application(scope, receive, send)

    return counted


async def _http(application, scope, receive, send) -> None:
    kind = "http"
    ACTIVE[kind].inc()
    started = time.monotonic()

    async def counting_send(message):
        nonlocal kind
        if message["type"] == "http.response.start" and _is_event_stream(message):
            ACTIVE[kind].dec()
            kind = "sse"
            ACTIVE[kind].inc()
        await send(message)

    try:
        await application(scope, receive, counting_send)
    finally:
        ACTIVE[kind].dec()
        DURATION[kind].observe(time.monotonic() - started)


def _is_event_stream(message) -> bool:
    return any(
        name.lower() == b"content-type" and value.startswith(EVENT_STREAM)
        for name, value in message.get("headers", ())
    )


async def _websocket(application, scope, receive, send) -> None:
    accepted_at = None
    close_code = None

    async def counting_receive():
        nonlocal close_code
        message = await receive()
        if message["type"] == "websocket.receive":
            MESSAGES_IN.inc()
        elif message["type"] == "websocket.disconnect" and close_code is None:
            close_code = message.get("code", 1005)
        return message

    async def counting_send(message):
        nonlocal accepted_at, close_code
        await send(message)
        if message["type"] == "websocket.accept":
            accepted_at = time.monotonic()
            metrics.WEBSOCKET_CONNECTS.inc()
            ACTIVE["websocket"].inc()
        elif message["type"] == "websocket.send":
            MESSAGES_OUT.inc()
        elif message["type"] == "websocket.close" and close_code is None:
            close_code = message.get("code", 1000)

    try:
        await application(scope, counting_receive, counting_send)
    finally:
        if accepted_at is not None:
            ACTIVE["websocket"].dec()
            DURATION["websocket"].observe(time.monotonic() - accepted_at)
            # No close frame either way: the connection was lost.
            code = 1006 if close_code is None else close_code
            metrics.WEBSOCKET_DISCONNECTS.labels(metrics.close_code_class(code)).inc()


class Slot:
    """One taken place of Slots; giving it back twice gives it back once."""

    def __init__(self, slots: "Slots"):
        self._slots = slots

    def give_back(self) -> None:
        if self._slots is not None:
            self._slots.taken -= 1
            self._slots = None


class Slots:
    """A worker process's cap on its long-lived connections of one kind, the
    setting named `setting`: each holds its share of the worker's subscriptions
    to the channel layer, its buffers and a socket until the client leaves, so a
    worker takes no more than it can serve. A worker runs one event loop: a
    plain count is exact."""

    def __init__(self, kind: str, setting: str):
        self.setting = setting
        self.taken = 0
        # Made now, so that the count is exported (0) before the first refusal.
        self.refused = metrics.CONNECTIONS_REFUSED.labels(kind)

    def take(self) -> Slot | None:
        """A place, or None when the worker is full (counted): the caller refuses
        the connection before accepting it."""
        if self.taken >= getattr(settings, self.setting):
            self.refused.inc()
            return None
        self.taken += 1
        return Slot(self)


SSE_STREAMS = Slots("sse", "SSE_MAX_STREAMS")
{%- if cookiecutter.websockets == "yes" %}
WEBSOCKETS = Slots("websocket", "WEBSOCKET_MAX_CONNECTIONS")
{%- endif %}
