"""The Redis channel layer's pool (core.layers): a burst of group joins waits for a
connection instead of failing, and the pool's size is what Redis sees."""

import asyncio
import uuid

import pytest
import redis
from channels.layers import get_channel_layer
from django.conf import settings
from redis.exceptions import ConnectionError as RedisConnectionError

from core.layers import RedisChannelLayer

pytestmark = pytest.mark.skipif(
    not settings.REDIS_URL, reason="needs Redis (REDIS_URL): the layer is in-process"
)


def layer(max_connections: int, timeout: float, name: str) -> RedisChannelLayer:
    """A layer as config/settings.py makes it, with this pool, whose connections
    Redis lists under `name`."""
    [host] = settings.CHANNEL_LAYERS["default"]["CONFIG"]["hosts"]
    pool = {"max_connections": max_connections, "timeout": timeout}
    return RedisChannelLayer(
        hosts=[{**host, **pool, "client_name": name}],
        prefix=f"{settings.SERVICE_NAME}:test-layers",
    )


def connections_named(name: str) -> int:
    with redis.Redis.from_url(settings.REDIS_URL) as server:
        return sum(client["name"] == name for client in server.client_list())


def test_the_service_uses_this_layer():
    assert isinstance(get_channel_layer(), RedisChannelLayer)


async def test_a_burst_of_joins_waits_for_the_pools_few_connections():
    """Four connections, 200 joins at once: channels_redis's own pool refused
    every join past its size with MaxConnectionsError."""
    name = f"test-layers-{uuid.uuid4().hex}"
    burst = layer(max_connections=4, timeout=10, name=name)
    try:
        channels = [await burst.new_channel() for _ in range(200)]
        await asyncio.gather(*(burst.group_add("burst", c) for c in channels))
        assert 1 <= connections_named(name) <= 4
        await burst.group_send("burst", {"type": "hello"})
        received = await asyncio.gather(*(burst.receive(c) for c in channels))
        assert {message["type"] for message in received} == {"hello"}
    finally:
        await burst.flush()
        await burst.close_pools()


async def test_a_join_that_waits_past_the_timeout_fails_as_the_layer_failing():
    """A RedisError: the WebSocket or stream is told to come back (1013)."""
    name = f"test-layers-{uuid.uuid4().hex}"
    busy = layer(max_connections=2, timeout=0.2, name=name)
    try:
        # Two blocking reads hold both connections.
        redis_client = busy.connection(0)
        reads = [
            asyncio.create_task(redis_client.blpop([f"{name}-nothing"], timeout=5))
            for _ in range(2)
        ]
        await asyncio.sleep(0.5)
        assert connections_named(name) == 2
        with pytest.raises(RedisConnectionError, match="No connection available"):
            await busy.group_add("busy", await busy.new_channel())
        for read in reads:
            read.cancel()
    finally:
        await busy.flush()
        await busy.close_pools()


async def test_a_connection_redis_dropped_is_replaced_not_failed():
    """Redis restarted, or a proxy dropped the pool's idle connections: the next
    command on one is sent again on a new connection, once, instead of failing (a
    WebSocket that comes back right after a Redis restart would get 1013)."""
    name = f"test-layers-{uuid.uuid4().hex}"
    dropped = layer(max_connections=4, timeout=5, name=name)
    try:
        channel = await dropped.new_channel()
        await dropped.group_add("dropped", channel)
        with redis.Redis.from_url(settings.REDIS_URL) as server:
            ids = [c["id"] for c in server.client_list() if c["name"] == name]
            assert ids
            for client_id in ids:
                server.client_kill_filter(_id=client_id)
        await dropped.group_send("dropped", {"type": "hello"})
        assert (await dropped.receive(channel))["type"] == "hello"
    finally:
        await dropped.flush()
        await dropped.close_pools()
