"""Django's cache backends, counting hits and misses of every get (and aget)."""

from django.core.cache.backends import locmem, redis

from core import metrics

_MISSING = object()


class HitRatioMixin:
    def get(self, key, default=None, version=None):
        value = super().get(key, _MISSING, version)
        if value is _MISSING:
            metrics.CACHE_REQUESTS.labels("miss").inc()
            return default
        metrics.CACHE_REQUESTS.labels("hit").inc()
        return value


class RedisCache(HitRatioMixin, redis.RedisCache):
    pass


class LocMemCache(HitRatioMixin, locmem.LocMemCache):
    pass
