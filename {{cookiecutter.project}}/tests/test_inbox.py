"""The Inbox and Event (core.inbox): asyncio.Queue's and asyncio.Event's
behaviour where the server and the channel layers use them, for a fraction of
their memory while nothing comes."""

import asyncio
import gc
import tracemalloc

import pytest
from channels.exceptions import ChannelFull

from core.inbox import Event, Inbox
from core.layers import InMemoryChannelLayer, RedisChannelLayer


async def test_messages_come_out_in_order_and_a_getter_waits_for_one():
    inbox = Inbox()
    inbox.put_nowait(1)
    inbox.put_nowait(2)
    assert (inbox.qsize(), inbox.empty()) == (2, False)
    assert [await inbox.get(), inbox.get_nowait()] == [1, 2]
    assert inbox.empty()
    getter = asyncio.ensure_future(inbox.get())
    await asyncio.sleep(0)
    assert not getter.done()
    inbox.put_nowait(3)
    assert await getter == 3
    with pytest.raises(asyncio.QueueEmpty):
        inbox.get_nowait()


async def test_each_message_goes_to_one_getter_in_the_order_they_came():
    inbox = Inbox()
    getters = [asyncio.ensure_future(inbox.get()) for _ in range(3)]
    await asyncio.sleep(0)
    for message in "abc":
        inbox.put_nowait(message)
    assert await asyncio.gather(*getters) == ["a", "b", "c"]


async def test_a_getter_cancelled_after_it_was_woken_passes_its_message_on():
    """As asyncio.Queue: the message it was woken for is not lost."""
    inbox = Inbox()
    first = asyncio.ensure_future(inbox.get())
    second = asyncio.ensure_future(inbox.get())
    await asyncio.sleep(0)
    inbox.put_nowait("message")
    first.cancel()
    # Bounded: without the hand-over, `second` would wait forever.
    assert await asyncio.wait_for(second, 5) == "message"
    assert first.cancelled()


async def test_a_cancelled_getter_leaves_no_waiter_behind():
    inbox = Inbox()
    getter = asyncio.ensure_future(inbox.get())
    await asyncio.sleep(0)
    getter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await getter
    inbox.put_nowait("message")
    assert await inbox.get() == "message"
    assert inbox._getters == []


def test_a_full_inbox_refuses_or_drops_its_oldest_message():
    bounded = Inbox(2)
    bounded.put_nowait(1)
    bounded.put_nowait(2)
    assert bounded.full()
    with pytest.raises(asyncio.QueueFull):
        bounded.put_nowait(3)
    dropping = Inbox(2, drop_oldest=True)
    for message in (1, 2, 3):
        dropping.put_nowait(message)
    assert [dropping.get_nowait(), dropping.get_nowait()] == [2, 3]
    assert not Inbox().full()


async def test_a_waiting_inbox_holds_a_fraction_of_an_asyncio_queue():
    """What each idle WebSocket and event stream holds, twice and once."""

    async def held(make) -> int:
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            queues = [make() for _ in range(1000)]
            getters = [asyncio.ensure_future(queue.get()) for queue in queues]
            await asyncio.sleep(0)
            size = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        for getter in getters:
            getter.cancel()
        await asyncio.gather(*getters, return_exceptions=True)
        return size

    inboxes, queues = await held(Inbox), await held(asyncio.Queue)
    # Each holds its waiting getter's task and future alike.
    assert inboxes < queues / 2, (inboxes, queues)
    assert queues - inboxes > 1000 * 2500, (inboxes, queues)


async def test_an_event_wakes_every_waiter_and_forgets_a_cancelled_one():
    event = Event()
    waiters = [asyncio.ensure_future(event.wait()) for _ in range(3)]
    await asyncio.sleep(0)
    waiters[0].cancel()
    await asyncio.sleep(0)
    assert len(event._waiters) == 2
    event.set()
    assert await asyncio.gather(*waiters[1:]) == [True, True]
    assert event.is_set()
    assert await event.wait()
    event.clear()
    waiter = asyncio.ensure_future(event.wait())
    await asyncio.sleep(0)
    assert not waiter.done()
    event.set()
    assert await waiter


def test_an_unused_event_holds_a_fraction_of_an_asyncio_event():
    """Uvicorn's two per connection (config/uvicorn_http.py)."""

    def held(make) -> int:
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            events = [make() for _ in range(1000)]
            size = tracemalloc.get_traced_memory()[0] - before
            events.clear()
            return size
        finally:
            tracemalloc.stop()

    ours, asyncio_events = held(Event), held(asyncio.Event)
    assert ours < asyncio_events / 3, (ours, asyncio_events)


async def test_the_in_memory_layer_keeps_a_channels_messages_in_an_inbox():
    layer = InMemoryChannelLayer(capacity=2)
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "one"})
    await layer.send(channel, {"type": "two"})
    assert isinstance(layer.channels[channel], Inbox)
    with pytest.raises(ChannelFull):
        await layer.send(channel, {"type": "three"})
    assert [(await layer.receive(channel))["type"] for _ in "12"] == ["one", "two"]
    assert channel not in layer.channels
    await layer.group_add("group", channel)
    await layer.group_send("group", {"type": "to the group"})
    assert (await layer.receive(channel))["type"] == "to the group"


async def test_the_in_memory_layer_delivers_a_channel_up_to_its_capacity():
    """deliver(): a channel's messages into a connection's queue (core.dispatch),
    each a copy, as many unread as the channel's capacity; past it, ChannelFull,
    which a group's send skips."""
    layer = InMemoryChannelLayer(capacity=2)
    channel = await layer.new_channel()
    inbox = Inbox()
    delivery = layer.deliver(channel, inbox)
    message = {"type": "hello", "data": {}}
    await layer.send(channel, message)
    await layer.group_add("group", channel)
    await layer.group_send("group", message)
    with pytest.raises(ChannelFull):
        await layer.send(channel, message)
    await layer.group_send("group", message)
    received = [inbox.get_nowait() for _ in "12"]
    assert inbox.empty()
    assert received == [message, message]
    assert received[0] is not message
    assert received[0]["data"] is not received[1]["data"]
    assert channel not in layer.channels
    delivery.taken()
    await layer.send(channel, message)
    assert inbox.qsize() == 1
    layer.stop_delivery(channel)
    await layer.send(channel, message)
    assert inbox.qsize() == 1
    assert (await layer.receive(channel)) == message


async def test_the_in_memory_layer_still_expires_messages_and_their_channel():
    """Channels' expiry reads the oldest message of the Inbox."""
    layer = InMemoryChannelLayer(expiry=0)
    channel = await layer.new_channel()
    await layer.group_add("group", channel)
    await layer.send(channel, {"type": "stale"})
    await asyncio.sleep(0.01)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(layer.receive(channel), 0.05)
    assert channel not in layer.groups.get("group", {})


def test_the_redis_layers_buffers_drop_their_oldest_message_when_full():
    """As channels_redis's own BoundedQueue: a consumer that stopped reading
    loses its oldest messages, not the newest."""
    layer = RedisChannelLayer(hosts=[{"address": "redis://127.0.0.1:1"}], capacity=2)
    buffer = layer.receive_buffer["specific.a!b"]
    assert isinstance(buffer, Inbox)
    for message in ("one", "two", "three"):
        buffer.put_nowait(message)
    assert [buffer.get_nowait(), buffer.get_nowait()] == ["two", "three"]
