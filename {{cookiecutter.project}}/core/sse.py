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


def format_event(event: str, data: dict, event_id: str | None = None) -> str:
    """An event; with its id, which the client sends back as Last-Event-ID."""
    text = f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"
    return text if event_id is None else f"id: {event_id}\n{text}"


async def _done(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


async def _stream(group: str, slot: Slot, last_event_id: str | None):
    loop = asyncio.get_running_loop()
    ends = loop.time() + settings.SSE_MAX_SECONDS
    # Done once the server is told to stop (a future, not a task waiting).
    stopped = loop.create_future()
    on_stop = shutdown.close_on_stop(lambda: _done(stopped))
    message = None
    metrics.SSE_STREAMS.inc()
    retry = f"retry: {RETRY_MILLISECONDS}\n\n"
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
            while True:
                # One receive at a time, kept across keep-alives: a second one on
                # the same channel could take the next event and drop it.
                message = message or asyncio.ensure_future(receive())
                left = ends - loop.time()
                if left <= 0:
                    # Ended before the channel layer's group membership expires
                    # (group_expiry): the client reconnects and subscribes anew.
                    return
                done, _ = await asyncio.wait(
                    {message, stopped},
                    timeout=min(settings.SSE_KEEPALIVE_SECONDS, left),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if stopped in done:
                    # The response ends cleanly; its client reconnects elsewhere,
                    # after the delay given here (EventSource honours `retry`).
                    yield f"retry: {shutdown.reconnect_delay_ms()}\n\n"
                    return
                if message in done:
                    data, message = message.result(), None
                    if data["id"] in replayed:
                        continue
                    yield format_event(data["event"], data["data"], data["id"])
                    metrics.SSE_EVENTS.inc()
                elif loop.time() < ends:
                    # A comment line: keeps idle connections open through proxies.
                    yield ": keep-alive\n\n"
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
        if message is not None:
            message.cancel()


class EventStreamResponse(StreamingHttpResponse):
    """Gives its stream's slot back when closed, also if the stream never
    started (a client gone before it); the stream gives it back as it ends."""

    def __init__(self, group: str, slot: Slot, last_event_id: str | None):
        super().__init__(
            _stream(group, slot, last_event_id), content_type="text/event-stream"
        )
        self.slot = slot

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
