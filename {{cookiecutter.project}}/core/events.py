"""Publish and subscribe to events between worker processes over the channel layer.

SSE streams and WebSocket consumers of every worker subscribe to a group; an API
view in any worker publishes to it. With REDIS_URL the layer is Redis, otherwise
in-memory (one process only).
"""

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress

from channels.layers import get_channel_layer
from redis.exceptions import RedisError

# Consumers receive a published event in their `events_broadcast` method.
MESSAGE_TYPE = "events.broadcast"
# What the Redis channel layer raises while Redis is down: streams and WebSockets
# then tell their clients to reconnect (core.sse, items.consumers).
LAYER_ERRORS = (RedisError, OSError)


async def publish(group: str, event: str, data: dict) -> None:
    await get_channel_layer().group_send(
        group, {"type": MESSAGE_TYPE, "event": event, "data": data}
    )


@asynccontextmanager
async def subscription(group: str) -> AsyncIterator[Callable[[], Awaitable[dict]]]:
    """Yields the function that waits for the group's next message."""
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(group, channel)
    try:
        yield lambda: layer.receive(channel)
    finally:
        # A layer that is down cannot be told; its membership expires by itself.
        with suppress(*LAYER_ERRORS):
            await layer.group_discard(group, channel)
