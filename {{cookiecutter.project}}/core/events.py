"""Publish and subscribe to events between worker processes over the channel layer.

SSE streams and WebSocket consumers of every worker subscribe to a group; an API
view in any worker publishes to it. With REDIS_URL the layer is Redis, otherwise
in-memory (one process only).

A worker's event streams share one subscription per group (subscription()): one
channel of the worker's in the group, read by one task, which hands each
message to every stream's Inbox. A stream then holds an Inbox and a set entry,
not a channel of its own with its group membership and the layer's receive (on
Redis, channels_redis's two tasks and a wait per message: 3 KiB of each idle
stream, tracemalloc), and an event costs the worker one receive, not one per
stream. WebSocket consumers keep a channel each: a connection's own channel is
how another one's direct message reaches it.

Each event gets an id, and the last SSE_REPLAY_EVENTS events of each group are
kept, so that an event stream whose client reconnects with Last-Event-ID sends
what it missed (replay). With Redis they are a Redis stream beside the layer's
keys (XADD with MAXLEN, on the layer's own connections: its ids are Redis's);
in memory a deque per group. Events are not otherwise stored: a client away for
more than that many events misses the older ones.
"""

import asyncio
import contextvars
import json
import math
import re
import weakref
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from functools import partial
from itertools import count

from channels.layers import get_channel_layer
from django.conf import settings
from redis.exceptions import RedisError

from core import tracing
from core.inbox import Failed, Inbox

# Consumers receive a published event in their `events_broadcast` method.
MESSAGE_TYPE = "events.broadcast"
# What the Redis channel layer raises while Redis is down: streams and WebSockets
# then tell their clients to reconnect (core.sse, items.consumers).
LAYER_ERRORS = (RedisError, OSError)


# An event id, as Redis streams make them: milliseconds-sequence.
EVENT_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")
# The in-memory layer's recent events, by layer and group.
_RECENT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# This worker's subscriptions (_Fanout), by layer and group.
_FANOUTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
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


class _Fanout:
    """A worker's one channel in a group, for all its subscribers."""

    def __init__(self, layer, group: str):
        self.layer, self.group = layer, group
        self.inboxes: set[Inbox] = set()
        self.channel: str | None = None
        self.joined_at = -math.inf
        self.joining: asyncio.Future | None = None
        self.reader: asyncio.Task | None = None

    async def join(self) -> None:
        """Joins the group, once, or again once the membership is as old as a
        stream's lifetime (SSE_MAX_SECONDS): channels_redis drops a member after
        its group_expiry (a day) unless it joins again. Each stream ends within
        that lifetime, so while the worker has any, new ones keep coming, and
        its membership is never twice that old. Subscribers that come meanwhile
        wait for the same join. Raises the layer's error."""
        age = asyncio.get_running_loop().time() - self.joined_at
        if age < settings.SSE_MAX_SECONDS:
            return
        if self.joining is None:
            self.joining = asyncio.ensure_future(self._join())
        # One subscriber that leaves meanwhile does not cancel it for the others.
        await asyncio.shield(self.joining)

    async def _join(self) -> None:
        try:
            if self.channel is None:
                self.channel = await self.layer.new_channel()
            await self.layer.group_add(self.group, self.channel)
            self.joined_at = asyncio.get_running_loop().time()
            if self.reader is None:
                # Not in the context of the request that came first: the reader
                # outlives it, and logs or traces nothing of it.
                self.reader = asyncio.create_task(
                    self._read(), context=contextvars.Context()
                )
        finally:
            self.joining = None

    async def _read(self) -> None:
        try:
            with tracing.untraced():
                while True:
                    message = await self.layer.receive(self.channel)
                    for inbox in self.inboxes:
                        inbox.put_nowait(message)
        except Exception as error:
            # Each subscriber is told (a stream ends, its client reconnects), and
            # the next one subscribes anew.
            self._forget()
            for inbox in self.inboxes:
                inbox.put_nowait(Failed(error))

    def _forget(self) -> None:
        fanouts = _FANOUTS.get(self.layer, {})
        if fanouts.get(self.group) is self:
            del fanouts[self.group]

    async def leave(self, inbox: Inbox) -> None:
        """The last subscriber out takes the worker's channel out of the group."""
        self.inboxes.discard(inbox)
        if self.inboxes or _FANOUTS.get(self.layer, {}).get(self.group) is not self:
            return
        self._forget()
        joining = self.joining
        if joining is not None:
            # Its subscriber left while it was under way (a client gone at
            # once): undone below once done, its error, if any, unheard of.
            await asyncio.wait([joining])
            if not joining.cancelled():
                joining.exception()
        if self.reader is not None:
            self.reader.cancel()
            # Until it has let go of the layer (channels_redis's receive cleans
            # up as it is cancelled).
            await asyncio.wait([self.reader])
        if self.channel is not None:
            # A layer that is down cannot be told; its membership expires by itself.
            with suppress(*LAYER_ERRORS):
                await self.layer.group_discard(self.group, self.channel)


async def _next(inbox: Inbox) -> dict:
    message = await inbox.get()
    if isinstance(message, Failed):
        raise message.error
    return message


@asynccontextmanager
async def subscription(group: str) -> AsyncIterator[Callable[[], Awaitable[dict]]]:
    """Yields the function that waits for the group's next message, once this
    worker is in the group; raises the layer's error (on joining, or from that
    function) when the layer fails. A subscriber that reads none for long loses
    the oldest of them past the layer's capacity, as a channel of its own would
    on Redis."""
    layer = get_channel_layer()
    fanouts = _FANOUTS.setdefault(layer, {})
    fanout = fanouts.get(group)
    if fanout is None:
        fanout = fanouts[group] = _Fanout(layer, group)
    inbox = Inbox(layer.capacity, drop_oldest=True)
    fanout.inboxes.add(inbox)
    try:
        await fanout.join()
        yield partial(_next, inbox)
    finally:
        await fanout.leave(inbox)
