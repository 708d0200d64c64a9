"""The Redis channel layer, with a pool of connections that waits for a free one.

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

from channels_redis.core import RedisChannelLayer as ChannelsRedisLayer
from redis.asyncio import BlockingConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError


class RedisChannelLayer(ChannelsRedisLayer):
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
