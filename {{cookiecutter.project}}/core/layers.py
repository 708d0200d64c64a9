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
"""

import asyncio
import time
from collections import defaultdict
from copy import deepcopy
from functools import partial

from channels.exceptions import ChannelFull
from channels.layers import InMemoryChannelLayer as ChannelsInMemoryLayer
from channels_redis.core import RedisChannelLayer as ChannelsRedisLayer
from redis.asyncio import BlockingConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from core.inbox import Inbox


class InMemoryChannelLayer(ChannelsInMemoryLayer):
    """Channels' send() and receive(), with an Inbox per channel (Channels also
    made an asyncio.Queue for each call, kept or not). The rest is Channels':
    its expiry reads the Inbox as it read the queue."""

    def _inbox(self, channel: str) -> Inbox:
        inbox = self.channels.get(channel)
        if inbox is None:
            inbox = self.channels[channel] = Inbox(self.get_capacity(channel))
        return inbox

    async def send(self, channel, message):
        if not isinstance(message, dict):
            raise TypeError("message is not a dict")
        self.require_valid_channel_name(channel)
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


class RedisChannelLayer(ChannelsRedisLayer):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # What channels_redis's BoundedQueue does when full: the oldest message
        # of a channel whose consumer stopped reading goes.
        self.receive_buffer = defaultdict(
            partial(Inbox, self.capacity, drop_oldest=True)
        )

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
