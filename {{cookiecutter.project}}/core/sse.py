"""Server-Sent Events: a streaming response that relays a channel-layer group."""

import asyncio
import json

from django.conf import settings
from django.http import StreamingHttpResponse

from core.events import subscription


def format_event(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


async def _stream(group: str):
    async with subscription(group) as receive:
        # Sent at once so that clients and proxies see the stream open.
        yield "retry: 3000\n\n"
        while True:
            try:
                async with asyncio.timeout(settings.SSE_KEEPALIVE_SECONDS):
                    message = await receive()
            except TimeoutError:
                # A comment line: keeps idle connections open through proxies.
                yield ": keep-alive\n\n"
                continue
            yield format_event(message["event"], message["data"])


def event_stream_response(group: str) -> StreamingHttpResponse:
    """Runs until the client disconnects: Django then cancels the stream, and
    leaving the subscription removes it from the group."""
    response = StreamingHttpResponse(_stream(group), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    # Nginx must pass each event on at once rather than buffer the stream.
    response["X-Accel-Buffering"] = "no"
    return response
