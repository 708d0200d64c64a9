"""Publish and subscribe to events between worker processes over the channel layer.

SSE streams and WebSocket consumers of every worker subscribe to a group; an API
view in any worker publishes to it. With REDIS_URL the layer is Redis, otherwise
in-memory (one process only).

Each event gets an id, and the last SSE_REPLAY_EVENTS events of each group are
kept, so that an event stream whose client reconnects with Last-Event-ID sends
what it missed (replay). With Redis they are a Redis stream beside the layer's
keys (XADD with MAXLEN, on the layer's own connections: its ids are Redis's);
in memory a deque per group. Events are not otherwise stored: a client away for
more than that many events misses the older ones.
"""

import json
import re
import weakref
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from itertools import count

from channels.layers import get_channel_layer
from django.conf import settings
from redis.exceptions import RedisError

# Consumers receive a published event in their `events_broadcast` method.
MESSAGE_TYPE = "events.broadcast"
# What the Redis channel layer raises while Redis is down: streams and WebSockets
# then tell their clients to reconnect (core.sse, items.consumers).
LAYER_ERRORS = (RedisError, OSError)


# An event id, as Redis streams make them: milliseconds-sequence.
EVENT_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")
# The in-memory layer's recent events, by layer and group.
_RECENT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_NEXT_ID = count(1)


def order(event_id: str) -> tuple[int, int]:
    """An id's place among its group's events: ids grow as events are recorded."""
    milliseconds, sequence = event_id.split("-")
    return int(milliseconds), int(sequence)


def _redis(layer) -> bool:
    return hasattr(layer, "consistent_hash")  # channels_redis's layers


def _connection(layer, group: str):
    """The layer's pooled client for the group's shard (the layer owns it)."""
    return layer.connection(layer.consistent_hash(group))


def _stream_key(layer, group: str) -> str:
    return f"{layer.prefix}:events:{group}"


async def _record(layer, group: str, event: str, data: dict) -> str:
    """Keeps the event for replay; returns its id."""
    if _redis(layer):
        event_id = await _connection(layer, group).xadd(
            _stream_key(layer, group),
            {"event": event, "data": json.dumps(data)},
            maxlen=settings.SSE_REPLAY_EVENTS,
            approximate=False,
        )
        return event_id.decode()
    recent = _RECENT.setdefault(layer, {})
    kept = recent.get(group)
    if kept is None or kept.maxlen != settings.SSE_REPLAY_EVENTS:
        kept = recent[group] = deque(kept or (), maxlen=settings.SSE_REPLAY_EVENTS)
    event_id = f"{next(_NEXT_ID)}-0"
    kept.append({"id": event_id, "event": event, "data": data})
    return event_id


async def replay(group: str, after: str) -> list[dict]:
    """The kept events of `group` after the id `after`, oldest first."""
    layer = get_channel_layer()
    if _redis(layer):
        entries = await _connection(layer, group).xrange(
            _stream_key(layer, group), f"({after}"
        )
        return [
            {
                "id": event_id.decode(),
                "event": fields[b"event"].decode(),
                "data": json.loads(fields[b"data"]),
            }
            for event_id, fields in entries
        ]
    kept = _RECENT.get(layer, {}).get(group, ())
    return [event for event in kept if order(event["id"]) > order(after)]


async def publish(group: str, event: str, data: dict) -> None:
    layer = get_channel_layer()
    event_id = await _record(layer, group, event, data)
    await layer.group_send(
        group, {"type": MESSAGE_TYPE, "id": event_id, "event": event, "data": data}
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
