"""The channel layers: each keeps a channel's messages in an Inbox (core.inbox),
not an asyncio.Queue, which an idle WebSocket or event stream, subscribed to its
group, holds for its whole life (3.1 KiB less each); and the Redis one has a
pool of connections that waits for a free one.

channels_redis makes redis-py's default pool, which fails a command at once while
its 100 connections are all in use: a burst of WebSocket and event-stream openings
(clients coming back after a deploy) was refused with 1013 past about 100 at a
time in one worker (tests/bench of the platform template). Raising that pool's
size would keep the burst's peak of connections open on Redis, from every worker
of every service. This pool holds at most CHANNEL_LAYER_MAX_CONNECTIONS per
worker, and a command waits up to CHANNEL_LAYER_POOL_TIMEOUT for one: a burst
queues, and only a Redis that stays busy that long fails it (a RedisError, which
core.events counts as the layer failing). channels_redis takes no pool class;
create_pool() is the hook it has.

A connection Redis closed (a restart, a proxy's idle timeout) stays in the pool
until it is next used: that command is sent again, once, on a new connection,
instead of failing a WebSocket or stream that opens just after Redis came back.
While Redis is down, the second try fails at once too.

Both layers can deliver a channel's messages straight into a connection's queue
(deliver(): the queue the server puts its client's messages in), so that a
consumer waits on one queue, not on a receive of each (core.dispatch). With
Redis, the messages of a worker's channels all come by one Redis key, which
channels_redis reads in whichever receive() holds its lock, each receive waiting
meanwhile on that lock and on its channel's buffer, in two tasks and an
asyncio.wait (3 KiB of each idle WebSocket, tracemalloc). Here one task of the
worker's reads that key while any receive waits or any channel is delivered,
and puts each message in its channel's buffer or delivery: a receive waits on
its buffer alone. When Redis fails, each waiting receive raises the error and
each delivery gets it (LAYER_FAILED); the next receive or delivery reads anew.
"""

import asyncio
import contextvars
import time
from collections import Counter, defaultdict
from copy import deepcopy
from functools import partial

from channels.exceptions import ChannelFull
from channels.layers import InMemoryChannelLayer as ChannelsInMemoryLayer
from channels_redis.core import RedisChannelLayer as ChannelsRedisLayer
from redis.asyncio import BlockingConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from core import tracing
from core.inbox import Failed, Inbox

# The message a delivery gets when its layer fails: its consumer raises `error`.
LAYER_FAILED = "layer.failed"


class Delivery:
    """A channel whose messages go into a connection's queue: at most the
    channel's capacity of them at once, as a channel of its own would hold."""

    __slots__ = ("capacity", "inbox", "pending")

    def __init__(self, inbox: Inbox, capacity: int):
        self.inbox, self.capacity, self.pending = inbox, capacity, 0

    def put(self, message: dict) -> bool:
        """False, and the message dropped, when the channel's capacity of them
        is still unread."""
        if self.pending >= self.capacity:
            return False
        self.pending += 1
        self.inbox.put_nowait(message)
        return True

    def taken(self) -> None:
        """The consumer has read one of them."""
        self.pending -= 1

    def fail(self, error: BaseException) -> None:
        self.inbox.put_nowait({"type": LAYER_FAILED, "error": error})


class _Delivering:
    """A layer's deliveries, by channel (core.dispatch)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.deliveries: dict[str, Delivery] = {}

    def deliver(self, channel: str, inbox: Inbox) -> Delivery:
        """The channel's messages go into `inbox` until stop_delivery()."""
        delivery = Delivery(inbox, self.get_capacity(channel))
        self.deliveries[channel] = delivery
        return delivery

    def stop_delivery(self, channel: str) -> bool:
        """Whether the channel was delivered."""
        return self.deliveries.pop(channel, None) is not None


class InMemoryChannelLayer(_Delivering, ChannelsInMemoryLayer):
    """Channels' send() and receive(), with an Inbox per channel (Channels also
    made an asyncio.Queue for each call, kept or not), and deliver(). The rest
    is Channels': its expiry reads the Inbox as it read the queue."""

    def _inbox(self, channel: str) -> Inbox:
        inbox = self.channels.get(channel)
        if inbox is None:
            inbox = self.channels[channel] = Inbox(self.get_capacity(channel))
        return inbox

    async def send(self, channel, message):
        if not isinstance(message, dict):
            raise TypeError("message is not a dict")
        self.require_valid_channel_name(channel)
        delivery = self.deliveries.get(channel)
        if delivery is not None:
            if not delivery.put(deepcopy(message)):
                raise ChannelFull(channel)
            return
        try:
            self._inbox(channel).put_nowait(
                (time.time() + self.expiry, deepcopy(message))
            )
        except asyncio.QueueFull:
            raise ChannelFull(channel) from None

    async def receive(self, channel):
        self.require_valid_channel_name(channel)
        self._clean_expired()
        inbox = self._inbox(channel)
        try:
            _, message = await inbox.get()
        finally:
            if inbox.empty():
                self.channels.pop(channel, None)
        return message


class RedisChannelLayer(_Delivering, ChannelsRedisLayer):
    # How long a reader nothing reads for goes on reading before it stops.
    reader_idle_seconds = 5.0

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # What channels_redis's BoundedQueue does when full: the oldest message
        # of a channel whose consumer stopped reading goes.
        self.receive_buffer = defaultdict(
            partial(Inbox, self.capacity, drop_oldest=True)
        )
        # By the worker's Redis key (non_local_name): its reader, and what it
        # reads for (waiting receives, deliveries).
        self.readers: dict[str, asyncio.Task] = {}
        self.reading_for: Counter = Counter()

    def deliver(self, channel: str, inbox: Inbox) -> Delivery:
        delivery = super().deliver(channel, inbox)
        self._read_for(self.non_local_name(channel))
        return delivery

    def stop_delivery(self, channel: str) -> bool:
        delivered = super().stop_delivery(channel)
        if delivered:
            self._done_for(self.non_local_name(channel))
        return delivered

    async def receive(self, channel):
        if "!" not in channel:
            return await super().receive(channel)
        self.require_valid_channel_name(channel)
        key = self.non_local_name(channel)
        buffer = self.receive_buffer[channel]
        self._read_for(key)
        try:
            message = await buffer.get()
        finally:
            if buffer.empty():
                self.receive_buffer.pop(channel, None)
            self._done_for(key)
        if isinstance(message, Failed):
            raise message.error
        return message

    def _read_for(self, key: str) -> None:
        self.reading_for[key] += 1
        loop = asyncio.get_running_loop()
        reader = self.readers.get(key)
        # A reader of another event loop (one that has ended) reads no more.
        if reader is None or reader.done() or reader.get_loop() is not loop:
            # Not in the context of the request that came first: the reader
            # outlives it, and logs or traces nothing of it.
            self.readers[key] = loop.create_task(
                self._read(key), context=contextvars.Context()
            )

    def _done_for(self, key: str) -> None:
        self.reading_for[key] -= 1
        if self.reading_for[key] > 0:
            return
        # Not at once: a consumer's next receive, once it has handled this one's
        # message, keeps the same reader and its Redis connection reading.
        asyncio.get_running_loop().call_later(
            self.reader_idle_seconds, self._stop_unless_read_for, key
        )

    def _stop_unless_read_for(self, key: str) -> None:
        if self.reading_for[key] > 0:
            return
        self.reading_for.pop(key, None)
        reader = self.readers.pop(key, None)
        if reader is not None:
            # As channels_redis's own receive is, with its consumer: what it has
            # popped stays in the key's backup, which the next read puts back.
            reader.cancel()

    async def _read(self, key: str) -> None:
        try:
            with tracing.untraced():
                while True:
                    channels, message = await self.receive_single(key)
                    if not isinstance(channels, list):
                        channels = [channels]
                    for channel in channels:
                        delivery = self.deliveries.get(channel)
                        if delivery is not None:
                            delivery.put(message)
                        else:
                            self.receive_buffer[channel].put_nowait(message)
        except Exception as error:
            if self.readers.get(key) is asyncio.current_task():
                del self.readers[key]
            for channel, buffer in list(self.receive_buffer.items()):
                if channel.startswith(key) and buffer.waited_on():
                    buffer.put_nowait(Failed(error))
            for channel, delivery in self.deliveries.items():
                if channel.startswith(key):
                    delivery.fail(error)

    async def close_pools(self):
        loop = asyncio.get_running_loop()
        readers = [r for r in self.readers.values() if r.get_loop() is loop]
        self.readers.clear()
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        await super().close_pools()

    def create_pool(self, index: int) -> BlockingConnectionPool:
        """A host is {"address": URL, ...}: the rest, `max_connections` and
        `timeout` among them, goes to the pool (config/settings.py)."""
        host = dict(self.hosts[index])
        return BlockingConnectionPool.from_url(
            host.pop("address"),
            retry=Retry(NoBackoff(), retries=1),
            retry_on_error=[RedisConnectionError],
            **host,
        )
