"""Server-Sent Events: events arrive one at a time, idle streams get keep-alives,
and a client that goes away leaves nothing behind."""

import asyncio
import json

import pytest
from channels.layers import get_channel_layer
from prometheus_client import REGISTRY
from redis.exceptions import ConnectionError as RedisConnectionError

from config.asgi import application
from core import events
from core.events import EVENT_ID
from tests.asgi import group_members, group_membership, next_chunk, open_stream

pytestmark = pytest.mark.django_db(transaction=True)


async def next_event(communicator, with_id: bool = False) -> dict:
    async with asyncio.timeout(5):
        while (chunk := await next_chunk(communicator)).startswith(b":"):
            continue  # keep-alive comments
    event_id, event, data = chunk.decode().strip().split("\n")
    assert EVENT_ID.fullmatch(event_id.removeprefix("id: "))
    found = {"event": event.removeprefix("event: "), "data": json.loads(data[6:])}
    return {**found, "id": event_id[4:]} if with_id else found


async def test_item_changes_stream_as_events(async_client, item_payload):
    communicator, start = await open_stream(application, "/api/items/events")
    assert start["status"] == 200
    headers = {name.lower(): value for name, value in start["headers"]}
    assert headers[b"content-type"] == b"text/event-stream"
    assert headers[b"x-accel-buffering"] == b"no"
    assert headers[b"cache-control"] == b"no-cache"
    assert await next_chunk(communicator) == b"retry: 3000\n\n"

    created = (
        await async_client.post(
            "/api/items", item_payload, content_type="application/json"
        )
    ).json()
    assert await next_event(communicator) == {"event": "item.created", "data": created}

    # The second event is produced only after the first has been read.
    await async_client.delete(f"/api/items/{created['id']}")
    assert await next_event(communicator) == {
        "event": "item.deleted",
        "data": {"id": created["id"]},
    }
    await communicator.send_input({"type": "http.disconnect"})
    await communicator.wait(timeout=5)


async def test_idle_stream_gets_keep_alive_comments(settings):
    settings.SSE_KEEPALIVE_SECONDS = 0.1
    communicator, _ = await open_stream(application, "/api/items/events")
    await next_chunk(communicator)
    assert await next_chunk(communicator) == b": keep-alive\n\n"
    assert await next_chunk(communicator) == b": keep-alive\n\n"
    await communicator.send_input({"type": "http.disconnect"})
    await communicator.wait(timeout=5)


async def test_events_after_keep_alives_still_arrive(settings):
    settings.SSE_KEEPALIVE_SECONDS = 0.05
    communicator, _ = await open_stream(application, "/api/items/events")
    await next_chunk(communicator)
    for _ in range(3):
        assert await next_chunk(communicator) == b": keep-alive\n\n"
    await events.publish("items", "item.deleted", {"id": 7})
    assert await next_event(communicator) == {
        "event": "item.deleted",
        "data": {"id": 7},
    }
    await communicator.send_input({"type": "http.disconnect"})
    await communicator.wait(timeout=5)


async def test_disconnect_ends_the_stream_and_leaves_the_group():
    communicator, _ = await open_stream(application, "/api/items/events")
    await next_chunk(communicator)
    assert len(await group_members("items")) == 1

    await communicator.send_input({"type": "http.disconnect"})
    await communicator.wait(timeout=5)
    assert await group_members("items") == []
    # Publishing after the client left reaches no one and raises nothing.
    await events.publish("items", "item.deleted", {"id": 1})
    await asyncio.sleep(0)


async def open_streams(count: int) -> list:
    streams = []
    for _ in range(count):
        communicator, _ = await open_stream(application, "/api/items/events")
        assert await next_chunk(communicator) == b"retry: 3000\n\n"
        streams.append(communicator)
    return streams


async def close_streams(streams: list) -> None:
    for communicator in streams:
        await communicator.send_input({"type": "http.disconnect"})
        await communicator.wait(timeout=5)


async def test_a_workers_streams_share_one_place_in_the_group():
    """Each stream gets each event from the worker's one channel in the group
    (core.events), which the last stream out takes out of it."""
    streams = await open_streams(3)
    assert len(await group_members("items")) == 1
    await events.publish("items", "item.deleted", {"id": 7})
    for communicator in streams:
        assert await next_event(communicator) == {
            "event": "item.deleted",
            "data": {"id": 7},
        }
    await close_streams(streams[:2])
    assert len(await group_members("items")) == 1
    await close_streams(streams[2:])
    assert await group_members("items") == []


async def test_a_worker_joins_its_group_again_before_its_membership_expires(settings):
    """channels_redis drops a member after its group_expiry: a subscription that
    comes once the worker's membership is SSE_MAX_SECONDS old joins again."""
    async with events.subscription("items"):
        [first] = (await group_membership("items")).values()
        await asyncio.sleep(0.01)
        async with events.subscription("items"):
            assert list((await group_membership("items")).values()) == [first]
        settings.SSE_MAX_SECONDS = 0
        async with events.subscription("items"):
            [again] = (await group_membership("items")).values()
    assert again > first


async def test_streams_are_told_when_the_layer_fails_after_they_opened(monkeypatch):
    """The worker's one reader of the group fails: every stream gets its
    `unavailable` event and ends, and the next one subscribes anew."""
    layer = get_channel_layer()
    receive, fail = layer.receive, asyncio.Event()

    async def failing(channel):
        await fail.wait()
        raise RedisConnectionError("Redis went away")

    monkeypatch.setattr(layer, "receive", failing)
    streams = await open_streams(2)
    fail.set()
    for communicator in streams:
        told = await communicator.receive_output(timeout=5)
        assert told["body"] == b'event: unavailable\ndata: {"retry_ms":3000}\n\n'
        end = await communicator.receive_output(timeout=5)
        assert (end.get("body", b""), end.get("more_body", False)) == (b"", False)
        await communicator.wait(timeout=5)
    monkeypatch.setattr(layer, "receive", receive)
    [again] = await open_streams(1)
    await events.publish("items", "item.deleted", {"id": 8})
    assert await next_event(again) == {"event": "item.deleted", "data": {"id": 8}}
    await close_streams([again])


def refused_streams() -> float:
    return REGISTRY.get_sample_value(
        "django_connections_refused_total", {"type": "sse"}
    )


async def test_a_full_worker_refuses_a_stream_with_503_until_one_ends(settings):
    settings.SSE_MAX_STREAMS = 1
    refused_before = refused_streams()
    first, start = await open_stream(application, "/api/items/events")
    assert start["status"] == 200
    await next_chunk(first)

    refused, start = await open_stream(application, "/api/items/events")
    assert start["status"] == 503
    headers = {name.lower(): value for name, value in start["headers"]}
    assert headers[b"retry-after"] == b"1"
    assert json.loads(await next_chunk(refused))["error"] == "too_many_streams"
    await refused.wait(timeout=5)
    assert refused_streams() == refused_before + 1

    await first.send_input({"type": "http.disconnect"})
    await first.wait(timeout=5)
    again, start = await open_stream(application, "/api/items/events")
    assert start["status"] == 200
    await again.send_input({"type": "http.disconnect"})
    await again.wait(timeout=5)


async def test_a_stream_ends_at_its_maximum_lifetime(settings):
    """Past SSE_MAX_SECONDS (none here) the stream ends, and leaves the group:
    the client reconnects after `retry`."""
    settings.SSE_MAX_SECONDS = 0
    communicator, start = await open_stream(application, "/api/items/events")
    assert start["status"] == 200
    assert await next_chunk(communicator) == b"retry: 3000\n\n"
    last = await communicator.receive_output(timeout=5)
    assert last["type"] == "http.response.body"
    assert (last.get("body", b""), last.get("more_body", False)) == (b"", False)
    await communicator.wait(timeout=5)
    assert await group_members("items") == []


async def test_a_stream_that_reconnects_with_last_event_id_misses_nothing():
    """Events carry ids; a client that comes back with the last one it read gets
    the events published while it was away, once each, then live ones."""
    communicator, _ = await open_stream(application, "/api/items/events")
    await next_chunk(communicator)
    await events.publish("items", "item.deleted", {"id": 1})
    first = await next_event(communicator, with_id=True)
    await communicator.send_input({"type": "http.disconnect"})
    await communicator.wait(timeout=5)

    await events.publish("items", "item.deleted", {"id": 2})
    await events.publish("items", "item.deleted", {"id": 3})
    again, start = await open_stream(
        application,
        "/api/items/events",
        headers=[(b"last-event-id", first["id"].encode())],
    )
    assert start["status"] == 200
    assert await next_chunk(again) == b"retry: 3000\n\n"
    missed = [await next_event(again, with_id=True) for _ in range(2)]
    assert [event["data"]["id"] for event in missed] == [2, 3]
    assert first["id"] not in {event["id"] for event in missed}
    await events.publish("items", "item.deleted", {"id": 4})
    assert (await next_event(again))["data"] == {"id": 4}
    await again.send_input({"type": "http.disconnect"})
    await again.wait(timeout=5)


async def test_replay_keeps_the_last_sse_replay_events(settings):
    settings.SSE_REPLAY_EVENTS = 2
    await events.publish("items", "item.deleted", {"id": 1})
    oldest = (await events.replay("items", "0-0"))[0]["id"]
    for item_id in (2, 3, 4):
        await events.publish("items", "item.deleted", {"id": item_id})
    kept = await events.replay("items", oldest)
    assert [event["data"]["id"] for event in kept] == [3, 4]


@pytest.mark.parametrize("header", [b"x", b"1-2-3", b"9" * 30 + b"-0"])
async def test_a_last_event_id_not_of_this_api_is_400(header):
    communicator, start = await open_stream(
        application, "/api/items/events", headers=[(b"last-event-id", header)]
    )
    assert start["status"] == 400
    assert (
        json.loads(await next_chunk(communicator))["error"] == "invalid_last_event_id"
    )
    await communicator.wait(timeout=5)
