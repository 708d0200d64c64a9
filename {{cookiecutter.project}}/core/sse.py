"""Server-Sent Events: a streaming response that relays a channel-layer group.

Each event carries its id (core.events), and a client that reconnects with
Last-Event-ID first gets the events it missed, of the last SSE_REPLAY_EVENTS.
A worker serves at most SSE_MAX_STREAMS at once (core.connections): one more is
refused with 503 and Retry-After before the stream starts. Each stream ends
after SSE_MAX_SECONDS, and its client reconnects after `retry`.
"""

import asyncio
import json
import logging

from django.conf import settings
from django.http import StreamingHttpResponse

from core import metrics, shutdown
from core.api import ApiError, unavailable
from core.connections import SSE_STREAMS, Slot
from core.events import EVENT_ID, LAYER_ERRORS, replay, subscription

logger = logging.getLogger(__name__)
# How long a client waits before it reconnects, after the stream ends.
RETRY_MILLISECONDS = 3000


def format_event(event: str, data: dict, event_id: str | None = None) -> bytes:
    """An event; with its id, which the client sends back as Last-Event-ID."""
    text = f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"
    return (text if event_id is None else f"id: {event_id}\n{text}").encode()


async def _stream(group: str, slot: Slot, last_event_id: str | None):
    # An idle stream waits in its response's own task, on its Inbox under a
    # timeout: no task or asyncio.wait of its own (2.5 KiB of each idle stream,
    # tracemalloc, tests/bench of the platform template). The timeout is the
    # next keep-alive or the stream's end; the server's stop brings it forward.
    loop = asyncio.get_running_loop()
    ends = loop.time() + settings.SSE_MAX_SECONDS
    waiting: asyncio.Timeout | None = None
    stopping = False

    async def stop() -> None:
        nonlocal stopping
        stopping = True
        # An expired wait is already ending; its stream sees `stopping` next.
        if waiting is not None and not waiting.expired():
            waiting.reschedule(loop.time())

    on_stop = shutdown.close_on_stop(stop)
    metrics.SSE_STREAMS.inc()
    retry = f"retry: {RETRY_MILLISECONDS}\n\n".encode()
    opened = False
    try:
        async with subscription(group) as receive:
            # Sent once subscribed, at once, so that clients and proxies see the
            # stream open, and an event published after that reaches it.
            yield retry
            opened = True
            # What the client missed since Last-Event-ID, read once subscribed:
            # an event published meanwhile comes both ways, and is sent once.
            replayed = set()
            for event in await replay(group, last_event_id) if last_event_id else ():
                yield format_event(event["event"], event["data"], event["id"])
                replayed.add(event["id"])
            while not stopping:
                left = ends - loop.time()
                if left <= 0:
                    # Ended before the channel layer's group membership expires
                    # (group_expiry): the client reconnects and subscribes anew.
                    return
                try:
                    # A message that comes as the wait times out stays in the
                    # Inbox (its get gives it back when cancelled).
                    async with asyncio.timeout(
                        min(settings.SSE_KEEPALIVE_SECONDS, left)
                    ) as waiting:
                        data = await receive()
                except TimeoutError:
                    if not stopping and loop.time() < ends:
                        # A comment line: keeps idle connections open through
                        # proxies.
                        yield b": keep-alive\n\n"
                    continue
                finally:
                    waiting = None
                if data["id"] not in replayed:
                    yield format_event(data["event"], data["data"], data["id"])
                    metrics.SSE_EVENTS.inc()
            # The response ends cleanly; its client reconnects elsewhere, after
            # the delay given here (EventSource honours `retry`).
            yield f"retry: {shutdown.reconnect_delay_ms()}\n\n".encode()
    except LAYER_ERRORS:
        # The channel layer is down: the stream would miss events without a
        # word. The client is told, and reconnects after `retry`.
        logger.warning("event stream ended: the channel layer failed", exc_info=True)
        if not opened:
            yield retry
        yield format_event("unavailable", {"retry_ms": RETRY_MILLISECONDS})
    finally:
        # Also when the client left and Django cancelled the stream mid-wait.
        slot.give_back()
        on_stop.cancel()


class EventStreamResponse(StreamingHttpResponse):
    """Gives its stream's slot back when closed, also if the stream never
    started (a client gone before it); the stream gives it back as it ends."""

    def __init__(self, group: str, slot: Slot, last_event_id: str | None):
        self.events = _stream(group, slot, last_event_id)
        super().__init__(self.events, content_type="text/event-stream")
        self.slot = slot

    def __aiter__(self):
        # The stream's bytes as they are, which the handler sends (and closes,
        # aclosing): StreamingHttpResponse would wrap them in two generators of
        # its own for the stream's life, 0.8 KiB of each idle stream.
        return self.events

    def close(self) -> None:
        self.slot.give_back()
        super().close()


def event_stream_response(request, group: str) -> StreamingHttpResponse:
    """Runs until the client disconnects (Django then cancels the stream, and
    leaving the subscription removes it from the group), the server stops, or
    SSE_MAX_SECONDS have passed; starts with the events after the request's
    Last-Event-ID. Raises a 503 ApiError when the worker is full, a 400 one for
    a Last-Event-ID this API did not send."""
    last_event_id = request.headers.get("Last-Event-ID") or None
    if last_event_id is not None and not EVENT_ID.fullmatch(last_event_id):
        raise ApiError(400, "invalid_last_event_id", "Last-Event-ID is not an event id")
    slot = SSE_STREAMS.take()
    if slot is None:
        raise unavailable(
            "too_many_streams",
            f"this worker serves {settings.SSE_MAX_STREAMS} event streams, retry",
        )
    response = EventStreamResponse(group, slot, last_event_id)
    response["Cache-Control"] = "no-cache"
    # Nginx must pass each event on at once rather than buffer the stream.
    response["X-Accel-Buffering"] = "no"
    return response
