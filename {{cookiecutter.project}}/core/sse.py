"""Server-Sent Events: a streaming response that relays a channel-layer group.

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
from core.api import unavailable
from core.connections import SSE_STREAMS, Slot
from core.events import LAYER_ERRORS, subscription

logger = logging.getLogger(__name__)
# How long a client waits before it reconnects, after the stream ends.
RETRY_MILLISECONDS = 3000


def format_event(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


async def _stream(group: str, slot: Slot):
    loop = asyncio.get_running_loop()
    ends = loop.time() + settings.SSE_MAX_SECONDS
    stopped = asyncio.ensure_future(shutdown.stopped())
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
                    return  # the response ends cleanly; clients reconnect elsewhere
                if message in done:
                    data, message = message.result(), None
                    yield format_event(data["event"], data["data"])
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
        stopped.cancel()
        if message is not None:
            message.cancel()


class EventStreamResponse(StreamingHttpResponse):
    """Gives its stream's slot back when closed, also if the stream never
    started (a client gone before it); the stream gives it back as it ends."""

    def __init__(self, group: str, slot: Slot):
        super().__init__(_stream(group, slot), content_type="text/event-stream")
        self.slot = slot

    def close(self) -> None:
        self.slot.give_back()
        super().close()


def event_stream_response(group: str) -> StreamingHttpResponse:
    """Runs until the client disconnects (Django then cancels the stream, and
    leaving the subscription removes it from the group), the server stops, or
    SSE_MAX_SECONDS have passed. Raises a 503 ApiError when the worker is full."""
    slot = SSE_STREAMS.take()
    if slot is None:
        raise unavailable(
            "too_many_streams",
            f"this worker serves {settings.SSE_MAX_STREAMS} event streams, retry",
        )
    response = EventStreamResponse(group, slot)
    response["Cache-Control"] = "no-cache"
    # Nginx must pass each event on at once rather than buffer the stream.
    response["X-Accel-Buffering"] = "no"
    return response
