"""What a client sees when a dependency fails: the cache, the channel layer
{%- if cookiecutter.tasks != "none" %},
the task broker{% endif %}.

A write that committed is answered as a success whatever fails after it
(core.followups); a cache that is down is a miss (core.cache); a database that
cannot serve answers 503 with Retry-After (core.api).

The PostgreSQL faults (connections killed by the server, a server that is down)
are in test_postgresql.py."""

{% if cookiecutter.tasks != "none" -%}
import asyncio
import queue
{% endif -%}
import socket
import sqlite3
{%- if cookiecutter.tasks != "none" %}
import threading
import time
{%- endif %}

import pytest
{%- if cookiecutter.tasks != "none" %}
from asgiref.sync import sync_to_async
{%- endif %}
{%- if cookiecutter.websockets == "yes" %}
from channels.testing import WebsocketCommunicator
{%- endif %}
from django.db import OperationalError
from django.test import override_settings
from prometheus_client import REGISTRY

from config.asgi import application
from core import database{% if cookiecutter.tasks != "none" %}, outbox, task_worker{% endif %}
{%- if cookiecutter.tasks != "none" %}
from core.models import PendingTask
from items import store
{%- endif %}
from items.models import Item{% if cookiecutter.tasks != "none" %}, Report{% endif %}
{%- if cookiecutter.tasks != "none" %}
from items.schemas import ItemPatch
from items.tasks import build_report, record_change
{%- endif %}
from tests.asgi import next_chunk, open_stream, request

pytestmark = pytest.mark.django_db(transaction=True)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0


@pytest.fixture
def nothing_listens():
    """A Redis URL where nothing listens: every connection is refused. The port
    stays bound, never listening, for the whole test: released, another process
    of a parallel run could take it (and then the "down" server answers)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"redis://127.0.0.1:{sock.getsockname()[1]}/0"


@pytest.fixture
def layer_down(nothing_listens) -> dict:
    """CHANNEL_LAYERS of a Redis channel layer whose server is down."""
    return {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [nothing_listens]},
        }
    }


async def test_a_cache_that_is_down_is_a_miss_not_an_error(
    item_payload, nothing_listens
):
    cache = {
        "BACKEND": "core.cache.RedisCache",
        "LOCATION": nothing_listens,
        "OPTIONS": {"socket_connect_timeout": 0.2, "socket_timeout": 0.2},
    }
    failed_gets = sample("django_cache_errors_total", operation="get")
    failed_sets = sample("django_cache_errors_total", operation="set")
    failed_deletes = sample("django_cache_errors_total", operation="delete")
    # Each request's rate-limit count (core.ratelimit): not counted, not limited.
    failed_counts = sample("django_cache_errors_total", operation="count")
    misses = sample("django_cache_requests_total", result="miss")
    with override_settings(CACHES={"default": cache}, API_RATE_LIMIT_REQUESTS=1):
        status, _, created = await request(
            application, "POST", "/api/items", item_payload
        )
        assert status == 201
        path = f"/api/items/{created['id']}"
        for _ in range(2):
            status, _, read = await request(application, "GET", path)
            assert (status, read) == (200, created)
        status, _, patched = await request(application, "PATCH", path, {"quantity": 9})
        assert (status, patched["quantity"]) == (200, 9)
        assert (await request(application, "GET", path))[2] == patched
    assert sample("django_cache_errors_total", operation="get") == failed_gets + 3
    assert sample("django_cache_errors_total", operation="set") == failed_sets + 3
    assert sample("django_cache_errors_total", operation="delete") == failed_deletes + 1
    assert sample("django_cache_errors_total", operation="count") == failed_counts + 5
    assert sample("django_cache_requests_total", result="miss") == misses + 3


async def test_events_that_cannot_be_published_do_not_fail_the_write(
    item_payload, layer_down
):
    failed = sample("django_followups_failed_total", step="publish")
    with override_settings(CHANNEL_LAYERS=layer_down):
        status, _, created = await request(
            application, "POST", "/api/items", item_payload
        )
        assert status == 201
        path = f"/api/items/{created['id']}"
        assert (await request(application, "PATCH", path, {"quantity": 1}))[0] == 200
        assert (await request(application, "DELETE", path))[0] == 204
    assert sample("django_followups_failed_total", step="publish") == failed + 3
    # The writes themselves happened, once each.
    assert not await Item.objects.filter(pk=created["id"]).aexists()


async def test_an_event_stream_whose_layer_fails_tells_the_client(layer_down):
    with override_settings(CHANNEL_LAYERS=layer_down):
        communicator, start = await open_stream(application, "/api/items/events")
        assert start["status"] == 200
        assert await next_chunk(communicator) == b"retry: 3000\n\n"
        told = await communicator.receive_output(timeout=5)
        assert told["body"] == b'event: unavailable\ndata: {"retry_ms":3000}\n\n'
        # Then the stream ends, cleanly: the client reconnects after `retry`.
        end = await communicator.receive_output(timeout=5)
        assert (end.get("body", b""), end.get("more_body", False)) == (b"", False)
{%- if cookiecutter.websockets == "yes" %}


async def test_a_websocket_whose_layer_fails_is_closed_with_1013(layer_down):
    with override_settings(CHANNEL_LAYERS=layer_down):
        communicator = WebsocketCommunicator(
            application,
            "/ws/items",
            headers=[(b"origin", b"https://{{ cookiecutter.domain }}")],
        )
        connected, _ = await communicator.connect(timeout=5)
        assert connected
        assert await communicator.receive_output(timeout=5) == {
            "type": "websocket.close",
            "code": 1013,
        }
{%- endif %}
{%- if cookiecutter.tasks != "none" %}


async def refused(task, *args):
    raise ConnectionRefusedError("the broker is down")


def relay_round() -> int:
    """One round of core.outbox's relay, on an event loop of its own."""
    with asyncio.Runner() as runner:
        return outbox.relay(runner)


def broker(monkeypatch, enqueue) -> None:
    """What the broker does with every task's enqueue from now on. Patched on the
    adapter's Task class: some libraries' task objects are frozen."""
    monkeypatch.setattr(type(record_change), "enqueue", enqueue)


async def test_a_task_the_broker_refuses_is_kept_and_relayed(item_payload, monkeypatch):
    broker(monkeypatch, refused)
    deferred = sample("django_tasks_deferred_total", task=record_change.name)
    status, _, created = await request(application, "POST", "/api/items", item_payload)
    assert status == 201
    assert await Item.objects.filter(pk=created["id"]).acount() == 1
    assert sample("django_tasks_deferred_total", task=record_change.name) == (
        deferred + 1
    )
    (kept,) = [task async for task in PendingTask.objects.all()]
    assert (kept.task, kept.args[:2]) == (
        record_change.name,
        [created["id"], "item.created"],
    )
    status, _, _ = await request(application, "POST", "/api/items", item_payload)
    assert status == 201

    # Still down: the relay keeps them and says why. It stops at the first, and
    # leaves the one it did not try free for its next round, not leased.
    assert await sync_to_async(relay_round)() == 0
    kept, later = [task async for task in PendingTask.objects.order_by("id")]
    assert (kept.attempts, kept.claimed_until) == (1, None)
    assert "the broker is down" in kept.last_error
    assert (later.attempts, later.claimed_until) == (0, None)

    # Back: the relay hands them over, once each, oldest first.
    sent = []

    async def accepted(task, *args):
        sent.append([task.name, *args])

    broker(monkeypatch, accepted)
    assert await sync_to_async(relay_round)() == 2
    assert sent == [[record_change.name, *kept.args], [record_change.name, *later.args]]
    assert not await PendingTask.objects.aexists()
    assert await sync_to_async(relay_round)() == 0


async def test_a_broker_that_never_answers_holds_a_write_only_until_the_timeout(
    item_payload, monkeypatch
):
    """A broker that takes the connection and never answers (a hung host): the
    write is answered once ENQUEUE_TIMEOUT_SECONDS have passed, its task kept
    and released to the relay at once."""
    monkeypatch.setattr(outbox, "ENQUEUE_TIMEOUT_SECONDS", 0.5)

    async def hangs(task, *args):
        await asyncio.Event().wait()

    broker(monkeypatch, hangs)
    deferred = sample("django_tasks_deferred_total", task=record_change.name)
    started = time.monotonic()
    status, _, created = await request(application, "POST", "/api/items", item_payload)
    waited = time.monotonic() - started
    assert status == 201
    assert 0.5 <= waited < 3
    (kept,) = [task async for task in PendingTask.objects.all()]
    assert kept.args[:2] == [created["id"], "item.created"]
    assert kept.claimed_until is None
    assert "TimeoutError" in kept.last_error
    assert sample("django_tasks_deferred_total", task=record_change.name) == (
        deferred + 1
    )


async def test_a_write_that_rolls_back_keeps_and_sends_no_task(
    item_payload, monkeypatch
):
    """A task is kept in its write's transaction (core.outbox): a write that fails
    after its change was recorded (here, reading the item back) keeps no task,
    and the broker gets none, from the writer or from the relay."""
    sent = []

    async def accepted(task, *args):
        sent.append([task.name, *args])

    broker(monkeypatch, accepted)
    status, _, created = await request(application, "POST", "/api/items", item_payload)
    assert status == 201
    assert [task[:3] for task in sent] == [
        [record_change.name, created["id"], "item.created"]
    ]

    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(store, "_read_sync", fail)
    with pytest.raises(RuntimeError):
        await store.update_item(created["id"], ItemPatch(name="renamed"))
    assert not await PendingTask.objects.aexists()
    assert await sync_to_async(relay_round)() == 0
    assert len(sent) == 1
    assert (await Item.objects.aget(pk=created["id"])).name == item_payload["name"]


async def test_the_workers_relay_sends_on_one_event_loop_and_closes_it(monkeypatch):
    """As the task worker runs it, in a thread of its own: every round sends on one
    event loop, since a broker's client is bound to the loop that made it (a loop
    per task or round would each leave theirs), and that loop is closed when the
    worker stops."""
    sent_on = queue.Queue()

    async def accepted(task, *args):
        sent_on.put(asyncio.get_running_loop())

    broker(monkeypatch, accepted)
    stopping = threading.Event()
    relay = threading.Thread(target=task_worker.relay_pending_tasks, args=(stopping,))
    loops = []
    with override_settings(OUTBOX_RELAY_SECONDS=0.05):
        relay.start()
        try:
            # Each in a round of its own.
            for number in range(3):
                await PendingTask.objects.acreate(
                    task=record_change.name, args=[number, "item.created", None]
                )
                loops.append(await asyncio.to_thread(sent_on.get, timeout=10))
        finally:
            stopping.set()
            await asyncio.to_thread(relay.join)
    assert len(set(loops)) == 1
    assert loops[0].is_closed()
    assert not await PendingTask.objects.aexists()


async def test_a_report_the_broker_refuses_is_accepted_and_its_task_relayed(
    monkeypatch,
):
    """The report's answer does not depend on the broker: its task is kept, as an
    item's is, and sent once the broker is back."""
    broker(monkeypatch, refused)
    status, headers, report = await request(application, "POST", "/api/reports", {})
    assert (status, report["status"]) == (202, "queued")
    assert headers["location"] == f"/api/reports/{report['id']}"
    assert await Report.objects.filter(pk=report["id"]).aexists()
    (kept,) = [task async for task in PendingTask.objects.all()]
    assert (kept.task, kept.args) == (build_report.name, [report["id"]])

    sent = []

    async def accepted(task, *args):
        sent.append([task.name, *args])

    broker(monkeypatch, accepted)
    assert await sync_to_async(relay_round)() == 1
    assert sent == [[build_report.name, report["id"]]]
    assert not await PendingTask.objects.aexists()
{%- endif %}


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (sqlite3.OperationalError("database is locked"), "locked"),
        (sqlite3.OperationalError("no such table: items_item"), None),
        (ValueError("not the database"), None),
    ],
)
def test_which_database_errors_ask_the_client_to_retry(error, reason):
    # As Django raises them: its own OperationalError, caused by the driver's.
    wrapped = OperationalError(str(error))
    wrapped.__cause__ = error
    assert database.unavailable(wrapped) == reason
