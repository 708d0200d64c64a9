"""The Redis channel layer's pool (core.layers): a burst of group joins waits for a
connection instead of failing, and the pool's size is what Redis sees."""

import asyncio
import contextlib
import uuid

import pytest
import redis
from channels.layers import get_channel_layer
from django.conf import settings
from redis.exceptions import ConnectionError as RedisConnectionError

from core.inbox import Inbox
from core.layers import LAYER_FAILED, RedisChannelLayer

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


@contextlib.asynccontextmanager
async def fresh_layer(max_connections: int, pool_timeout: float):
    """A layer() of its own, named for Redis's client list (client_name()),
    emptied and closed after."""
    name = f"test-layers-{uuid.uuid4().hex}"
    made = layer(max_connections=max_connections, timeout=pool_timeout, name=name)
    try:
        yield made
    finally:
        await made.flush()
        await made.close_pools()


def client_name(made: RedisChannelLayer) -> str:
    return made.hosts[0]["client_name"]


def connections_named(name: str) -> int:
    with redis.Redis.from_url(settings.REDIS_URL) as server:
        return sum(client["name"] == name for client in server.client_list())


def test_the_service_uses_this_layer():
    assert isinstance(get_channel_layer(), RedisChannelLayer)


async def test_a_burst_of_joins_waits_for_the_pools_few_connections():
    """Four connections, 200 joins at once: channels_redis's own pool refused
    every join past its size with MaxConnectionsError."""
    async with fresh_layer(max_connections=4, pool_timeout=10) as burst:
        channels = [await burst.new_channel() for _ in range(200)]
        await asyncio.gather(*(burst.group_add("burst", c) for c in channels))
        assert 1 <= connections_named(client_name(burst)) <= 4
        await burst.group_send("burst", {"type": "hello"})
        received = await asyncio.gather(*(burst.receive(c) for c in channels))
        assert {message["type"] for message in received} == {"hello"}


async def test_a_join_that_waits_past_the_timeout_fails_as_the_layer_failing():
    """A RedisError: the WebSocket or stream is told to come back (1013)."""
    async with fresh_layer(max_connections=2, pool_timeout=0.2) as busy:
        # Two blocking reads hold both connections.
        redis_client = busy.connection(0)
        nothing = f"{client_name(busy)}-nothing"
        reads = [
            asyncio.create_task(redis_client.blpop([nothing], timeout=5))
            for _ in range(2)
        ]
        await asyncio.sleep(0.5)
        assert connections_named(client_name(busy)) == 2
        with pytest.raises(RedisConnectionError, match="No connection available"):
            await busy.group_add("busy", await busy.new_channel())
        for read in reads:
            read.cancel()


async def test_a_connection_redis_dropped_is_replaced_not_failed():
    """Redis restarted, or a proxy dropped the pool's idle connections: the next
    command on one is sent again on a new connection, once, instead of failing (a
    WebSocket that comes back right after a Redis restart would get 1013)."""
    async with fresh_layer(max_connections=4, pool_timeout=5) as dropped:
        channel = await dropped.new_channel()
        await dropped.group_add("dropped", channel)
        with redis.Redis.from_url(settings.REDIS_URL) as server:
            named = client_name(dropped)
            ids = [c["id"] for c in server.client_list() if c["name"] == named]
            assert ids
            for client_id in ids:
                server.client_kill_filter(_id=client_id)
        await dropped.group_send("dropped", {"type": "hello"})
        assert (await dropped.receive(channel))["type"] == "hello"


async def test_a_workers_channels_are_read_by_one_task():
    """Ten receives waiting on ten channels of the worker: one reader task of
    the layer's (channels_redis waits with two tasks per receive); each gets
    its own channel's message; once none waits, the reader stops."""
    async with fresh_layer(max_connections=4, pool_timeout=5) as reading:
        reading.reader_idle_seconds = 0.1
        channels = [await reading.new_channel() for _ in range(10)]
        before = len(asyncio.all_tasks())
        receives = [asyncio.create_task(reading.receive(c)) for c in channels]
        await asyncio.sleep(0.1)
        assert len(asyncio.all_tasks()) - before == 10 + 1
        for channel in reversed(channels):
            await reading.send(channel, {"type": "hello", "to": channel})
        received = await asyncio.gather(*receives)
        assert [message["to"] for message in received] == channels
        reader = reading.readers[reading.non_local_name(channels[0])]
        await asyncio.sleep(0.05)
        # A receive within the idle time keeps the same reader.
        again = asyncio.create_task(reading.receive(channels[0]))
        await asyncio.sleep(0.2)
        assert reading.readers == {reading.non_local_name(channels[0]): reader}
        again.cancel()
        await asyncio.sleep(0.2)
        assert reading.readers == {}


async def test_a_delivered_channel_goes_into_its_queue_up_to_its_capacity():
    async with fresh_layer(max_connections=4, pool_timeout=5) as delivering:
        delivering.reader_idle_seconds = 0
        channel = await delivering.new_channel()
        inbox = Inbox()
        delivering.capacity = 2
        delivery = delivering.deliver(channel, inbox)
        for number in range(3):
            await delivering.send(channel, {"type": "hello", "number": number})
        # Read after those three (the worker's key is read in order).
        other = await delivering.new_channel()
        await delivering.send(other, {"type": "elsewhere"})
        assert (await asyncio.wait_for(delivering.receive(other), 5))["type"] == (
            "elsewhere"
        )
        assert [inbox.get_nowait()["number"] for _ in "12"] == [0, 1]
        assert inbox.empty()
        delivery.taken()
        await delivering.send(channel, {"type": "hello", "number": 3})
        assert (await asyncio.wait_for(inbox.get(), 5))["number"] == 3
        delivering.stop_delivery(channel)
        await asyncio.sleep(0.01)
        assert delivering.readers == {}


async def test_a_failed_read_fails_the_waiting_receives_and_deliveries(monkeypatch):
    """Redis lost: each waiting receive raises, each delivery is told; the next
    receive reads anew."""
    async with fresh_layer(max_connections=4, pool_timeout=5) as failing:
        waiting, delivered = await failing.new_channel(), await failing.new_channel()
        inbox = Inbox()
        failing.deliver(delivered, inbox)
        receive = asyncio.create_task(failing.receive(waiting))
        await asyncio.sleep(0.1)
        receive_single = failing.receive_single

        async def lost(key):
            raise RedisConnectionError("gone")

        monkeypatch.setattr(failing, "receive_single", lost)
        # The reader gets this one, then reads again: Redis is gone.
        await failing.send(delivered, {"type": "hello"})
        with pytest.raises(RedisConnectionError):
            await asyncio.wait_for(receive, 5)
        assert (await asyncio.wait_for(inbox.get(), 5))["type"] == "hello"
        assert (await asyncio.wait_for(inbox.get(), 5))["type"] == LAYER_FAILED
        monkeypatch.setattr(failing, "receive_single", receive_single)
        failing.stop_delivery(delivered)
        again = asyncio.create_task(failing.receive(waiting))
        await failing.send(waiting, {"type": "back"})
        assert (await asyncio.wait_for(again, 5))["type"] == "back"
