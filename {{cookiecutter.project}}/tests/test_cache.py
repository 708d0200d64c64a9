"""The Redis cache stores JSON, never pickles: whoever can write to Redis must not
run code in the service by planting a value for it to read."""

import json
import pickle

import pytest
import redis
from django.conf import settings
from django.core.cache import cache

needs_redis = pytest.mark.skipif(
    not settings.REDIS_URL, reason="needs Redis (REDIS_URL): the cache is in-process"
)
ITEM = {"id": 1, "name": "a", "tags": ["b"], "price": "1.50", "quantity": None}
# Set by the pickle planted in Redis, if the cache ever unpickles it.
UNPICKLED = []


def planted():
    UNPICKLED.append(True)


class Planted:
    def __reduce__(self):
        return planted, ()


@pytest.fixture
def stored():
    """The raw bytes Redis holds under a cache key."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    yield lambda key: client.get(cache.make_and_validate_key(key))
    client.close()


@needs_redis
async def test_both_sides_write_json_and_read_each_other(stored):
    await cache.aset("async-written", ITEM)
    await cache.aset_many({"async-many": ITEM})
    await cache.aadd("async-added", ITEM)
    for key in ("async-written", "async-many", "async-added"):
        assert json.loads(stored(key)) == ITEM
        assert cache.get(key) == ITEM
    cache.set("sync-written", ITEM)
    assert json.loads(stored("sync-written")) == ITEM
    assert await cache.aget("sync-written") == ITEM
    assert await cache.aget_many(["sync-written"]) == {"sync-written": ITEM}


@needs_redis
def test_integers_stay_redis_integers(stored):
    cache.set("counter", 41)
    assert cache.incr("counter") == 42
    assert stored("counter") == b"42"
    cache.set("flag", True)
    assert stored("flag") == b"true"
    assert cache.get("flag") is True


@needs_redis
async def test_a_planted_pickle_is_never_unpickled():
    client = redis.Redis.from_url(settings.REDIS_URL)
    try:
        client.set(cache.make_and_validate_key("planted"), pickle.dumps(Planted()))
    finally:
        client.close()
    # A pickle is binary: not even text, let alone JSON. The service's async
    # reads take it for a miss (a release that pickled left such entries);
    # Django's synchronous get, which the service does not use, raises.
    assert await cache.aget("planted", "missed") == "missed"
    with pytest.raises(UnicodeDecodeError):
        cache.get("planted")
    assert UNPICKLED == []
