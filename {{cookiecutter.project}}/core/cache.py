"""Django's cache backends, counting hits and misses of every get and aget, with
async methods that run in the event loop instead of in a thread.

Django's own RedisCache runs each async method (aget, aset, ...) through
sync_to_async on its synchronous client. RedisCache here sends them through
redis.asyncio, with the same keys, serializer and timeouts as the synchronous
methods, so both sides read each other's entries. Written here because no
well-kept backend does it: django-redis has no async interface
(jazzband/django-redis#771), Django's ticket #37156 is open, and the packages
that do it are early single-maintainer releases. LocMemCache does no I/O, so its
async methods simply run the synchronous ones in the loop.

The cache saves work; it must not fail a request. When Redis is down or slower
than its socket timeouts (CACHE_TIMEOUT, config/settings.py), RedisCache's async
methods answer as an empty cache would (a get is a miss, a delete deletes
nothing), count the failure in django_cache_errors_total and log it. A delete
that failed leaves an entry that expires by its own timeout (ITEM_CACHE_SECONDS
for items): that is the bound on a stale read after a Redis outage.

RedisCache stores JSON (JSONSerializer), not the pickles of Django's default
serializer: whoever can write to Redis must not run code in the service. Cached
values are therefore JSON's types: a tuple comes back a list.
"""

import asyncio
import functools
import json
import logging
import weakref
from dataclasses import dataclass

from django.core.cache.backends import locmem, redis
from django.core.cache.backends.base import DEFAULT_TIMEOUT
from django.utils.module_loading import import_string
from redis.exceptions import RedisError

from core import metrics

logger = logging.getLogger(__name__)

_MISSING = object()
# One redis.asyncio client per event loop and server: Django makes a cache
# backend object per thread and per async context, and a client's connections
# belong to the loop that opened them.
_CLIENTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _counted(value, default):
    if value is _MISSING:
        metrics.CACHE_REQUESTS.labels("miss").inc()
        return default
    metrics.CACHE_REQUESTS.labels("hit").inc()
    return value


def _unavailable_means(fallback):
    """Decorates an async method of RedisCache: if Redis fails it, the method
    returns `fallback`, what an empty cache would answer."""

    def decorate(method):
        operation = method.__name__.removeprefix("_").removeprefix("a")

        @functools.wraps(method)
        async def degraded(self, *args, **kwargs):
            try:
                return await method(self, *args, **kwargs)
            except RedisError:
                metrics.CACHE_ERRORS.labels(operation).inc()
                logger.warning(
                    "cache unavailable", extra={"operation": operation}, exc_info=True
                )
                return fallback

        return degraded

    return decorate


class JSONSerializer:
    """Django's RedisSerializer with JSON in place of pickle. Integers stay plain
    Redis integers, as Django's keeps them, so that incr and decr work on them."""

    def dumps(self, value):
        if type(value) is int:  # not bool, which JSON writes as true/false
            return value
        return json.dumps(value, separators=(",", ":")).encode()

    def loads(self, data):
        try:
            return int(data)
        except ValueError:
            return json.loads(data)


class HitRatioMixin:
    def get(self, key, default=None, version=None):
        return _counted(super().get(key, _MISSING, version), default)


@dataclass
class _AsyncClient:
    client: object  # redis.asyncio.Redis
    serializer: object  # what Django's client uses: OPTIONS' serializer


class RedisCache(HitRatioMixin, redis.RedisCache):
    def __init__(self, server, params):
        super().__init__(server, params)
        # For Django's synchronous client and _async() alike.
        self._options = {"serializer": JSONSerializer, **self._options}

    def _async(self) -> _AsyncClient:
        """This loop's client of the server. Never Django's self._cache: Django
        makes a cache object per request context, and each would build a
        synchronous client (redis-py's DriverInfo reads package metadata from
        disk, a millisecond a request)."""
        from redis import asyncio as aioredis  # Django's backend imports redis lazily

        clients = _CLIENTS.setdefault(asyncio.get_running_loop(), {})
        # Writes and reads go to the first server, as Django's client writes.
        server = self._servers[0]
        found = clients.get(server)
        if found is None:
            options = dict(self._options)
            serializer = options.pop("serializer")
            if isinstance(serializer, str):
                serializer = import_string(serializer)
            for django_only in ("pool_class", "parser_class"):
                options.pop(django_only, None)
            found = clients[server] = _AsyncClient(
                aioredis.Redis.from_url(server, **options),
                serializer() if callable(serializer) else serializer,
            )
        return found

    async def aget(self, key, default=None, version=None):
        return _counted(await self._aget(key, version), default)

    @_unavailable_means(_MISSING)
    async def _aget(self, key, version):
        key = self.make_and_validate_key(key, version=version)
        server = self._async()
        data = await server.client.get(key)
        if data is None:
            return _MISSING
        try:
            return server.serializer.loads(data)
        except ValueError:
            # Not what this cache writes: an entry of a release that pickled (for
            # ITEM_CACHE_SECONDS after an update), or a stray key. A miss.
            metrics.CACHE_ERRORS.labels("get").inc()
            return _MISSING

    @_unavailable_means(None)
    async def aset(self, key, value, timeout=DEFAULT_TIMEOUT, version=None):
        key = self.make_and_validate_key(key, version=version)
        timeout = self.get_backend_timeout(timeout)
        server = self._async()
        if timeout == 0:
            await server.client.delete(key)
        else:
            await server.client.set(key, server.serializer.dumps(value), ex=timeout)

    @_unavailable_means(False)
    async def aadd(self, key, value, timeout=DEFAULT_TIMEOUT, version=None):
        key = self.make_and_validate_key(key, version=version)
        timeout = self.get_backend_timeout(timeout)
        server = self._async()
        data = server.serializer.dumps(value)
        if timeout == 0:
            if added := bool(await server.client.set(key, data, nx=True)):
                await server.client.delete(key)
            return added
        return bool(await server.client.set(key, data, ex=timeout, nx=True))

    @_unavailable_means(False)
    async def atouch(self, key, timeout=DEFAULT_TIMEOUT, version=None):
        key = self.make_and_validate_key(key, version=version)
        timeout = self.get_backend_timeout(timeout)
        client = self._async().client
        if timeout is None:
            return bool(await client.persist(key))
        return bool(await client.expire(key, timeout))

    @_unavailable_means(False)
    async def adelete(self, key, version=None):
        key = self.make_and_validate_key(key, version=version)
        return bool(await self._async().client.delete(key))

    @_unavailable_means({})
    async def aget_many(self, keys, version=None):
        names = {self.make_and_validate_key(key, version=version): key for key in keys}
        if not names:
            return {}
        server = self._async()
        values = await server.client.mget(list(names))
        return {
            names[key]: server.serializer.loads(data)
            for key, data in zip(names, values, strict=True)
            if data is not None
        }

    @_unavailable_means(False)
    async def ahas_key(self, key, version=None):
        key = self.make_and_validate_key(key, version=version)
        return bool(await self._async().client.exists(key))

    async def aset_many(self, data, timeout=DEFAULT_TIMEOUT, version=None):
        """The keys that were not set (Django's contract): all of them if Redis
        failed, none otherwise."""
        if not data:
            return []
        return [] if await self._aset_many(data, timeout, version) else list(data)

    @_unavailable_means(False)
    async def _aset_many(self, data, timeout, version) -> bool:
        timeout = self.get_backend_timeout(timeout)
        server = self._async()
        values = {
            self.make_and_validate_key(key, version=version): server.serializer.dumps(v)
            for key, v in data.items()
        }
        async with server.client.pipeline() as pipeline:
            pipeline.mset(values)
            if timeout is not None:
                for key in values:
                    pipeline.expire(key, timeout)
            await pipeline.execute()
        return True

    @_unavailable_means(None)
    async def adelete_many(self, keys, version=None):
        keys = [self.make_and_validate_key(key, version=version) for key in keys]
        if keys:
            await self._async().client.delete(*keys)

    @_unavailable_means(False)
    async def aclear(self):
        return bool(await self._async().client.flushdb())

    @_unavailable_means(None)
    async def acount(self, key, timeout: int, version=None) -> int | None:
        """Adds one to the counter at key, which expires timeout seconds after
        its first count, and returns it; None when Redis failed (core.ratelimit)."""
        key = self.make_and_validate_key(key, version=version)
        async with self._async().client.pipeline() as pipeline:
            pipeline.incr(key)
            pipeline.expire(key, timeout, nx=True)
            count, _ = await pipeline.execute()
        return count


async def close() -> None:
    """Closes this loop's Redis clients (ASGI lifespan shutdown, end of tests)."""
    for server in _CLIENTS.pop(asyncio.get_running_loop(), {}).values():
        await server.client.aclose()


class LocMemCache(HitRatioMixin, locmem.LocMemCache):
    async def aget(self, key, default=None, version=None):
        return self.get(key, default, version)

    async def aset(self, key, value, timeout=DEFAULT_TIMEOUT, version=None):
        self.set(key, value, timeout, version)

    async def aadd(self, key, value, timeout=DEFAULT_TIMEOUT, version=None):
        return self.add(key, value, timeout, version)

    async def atouch(self, key, timeout=DEFAULT_TIMEOUT, version=None):
        return self.touch(key, timeout, version)

    async def adelete(self, key, version=None):
        return self.delete(key, version)

    async def aget_many(self, keys, version=None):
        return self.get_many(keys, version)

    async def ahas_key(self, key, version=None):
        return self.has_key(key, version)

    async def aset_many(self, data, timeout=DEFAULT_TIMEOUT, version=None):
        return self.set_many(data, timeout, version)

    async def adelete_many(self, keys, version=None):
        self.delete_many(keys, version)

    async def aclear(self):
        self.clear()

    async def acount(self, key, timeout: int, version=None) -> int | None:
        """RedisCache.acount, within this process."""
        self.add(key, 0, timeout, version)
        return self.incr(key, 1, version)
