"""The asyncio read path on a real MariaDB/MySQL (core.reads on asyncmy, by
core.database_server): a read gives its connection back whatever happens to its
request; a busy pool, a slow statement, a server that is down or that cuts a
statement off answers 503 with Retry-After within its bound; reads return what
Django's own iteration would."""

import asyncio
import socket
import time
from contextlib import asynccontextmanager

import asyncmy
import pytest
from asgiref.testing import ApplicationCommunicator
from django.db import connections
from prometheus_client import REGISTRY

from config.asgi import application
from core import database_server, reads, sampler
from items.models import Item
from tests.asgi import http_scope, request
from tests.database_server import (
    assert_a_busy_pool_answers_503,
    assert_retry_later,
    unavailable,
    until,
)

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        not reads.native("default"),
        reason="needs MySQL (DATABASE_URL): on SQLite reads run in a thread",
    ),
]


async def _connect():
    params = connections["default"].get_connection_params()
    kwargs = {key: params[key] for key in database_server.CONNECT_KEYS if key in params}
    return await asyncmy.connect(**kwargs, autocommit=True)


async def _one(connection, sql: str, params=None):
    async with connection.cursor() as cursor:
        await cursor.execute(sql, params)
        return await cursor.fetchone()


@asynccontextmanager
async def items_locked():
    """Another session holds a write lock on the items table: every statement
    on it waits until the block ends. Yields a function that counts those
    statements, and whose `id` is the locking session's."""
    locker = await _connect()
    watcher = await _connect()
    try:
        await _one(locker, "LOCK TABLES items_item WRITE")

        async def waiting_reads() -> int:
            row = await _one(
                watcher,
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST"
                # A write into a table with a foreign key to it waits too.
                " WHERE DB = DATABASE() AND STATE LIKE 'Waiting for table%%'",
            )
            return row[0]

        waiting_reads.id = (await _one(locker, "SELECT CONNECTION_ID()"))[0]
        waiting_reads.watcher = watcher
        yield waiting_reads
    finally:
        await _one(locker, "UNLOCK TABLES")
        locker.close()
        watcher.close()


async def test_reads_return_what_djangos_own_iteration_would(item_payload):
    status, _, created = await request(application, "POST", "/api/items", item_payload)
    assert status == 201
    queryset = Item.objects.filter(pk=created["id"]).values()
    native = await reads.fetch(queryset)
    threaded = [row async for row in queryset]
    # Django's converters made asyncmy's values its own: the same types (aware
    # datetimes, Decimals, booleans), the same values.
    assert native == threaded
    assert [{k: type(v) for k, v in row.items()} for row in native] == [
        {k: type(v) for k, v in row.items()} for row in threaded
    ]
    assert await reads.count(Item.objects.all()) == 1
    status, _, read = await request(application, "GET", f"/api/items/{created['id']}")
    assert (status, read) == (200, created)
    assert read["created_at"].endswith("+00:00")


async def test_a_client_that_leaves_mid_read_gives_the_connection_back(fresh_pools):
    found = await reads.pool()
    async with items_locked() as waiting_reads:
        communicator = ApplicationCommunicator(application, http_scope("/api/items"))
        await communicator.send_input({"type": "http.request", "body": b""})
        await until(waiting_reads, 1)
        await communicator.send_input({"type": "http.disconnect"})
        await communicator.wait(timeout=10)
        # The read's connection was closed, not lent again half read: the server
        # ends the waiting statement with its session.
        await until(waiting_reads, 0)
    stats = database_server.stats(found)
    assert stats["pool_size"] == stats["pool_available"]
    assert stats["requests_waiting"] == 0
    status, _, body = await request(application, "GET", "/api/items")
    assert (status, body["total"]) == (200, 0)


async def test_a_busy_pool_answers_503_with_retry_after(
    fresh_pools, settings, monkeypatch
):
    settings.DATABASE_READ_POOL = {"min_size": 1, "max_size": 1, "timeout": 0.5}
    found = await reads.pool()
    await assert_a_busy_pool_answers_503(database_server.borrow(found))


async def test_a_slow_statement_is_stopped_and_answers_503(fresh_pools, settings):
    """MariaDB's limit (max_statement_time) and MySQL's (max_execution_time) alike."""
    settings.DATABASE_STATEMENT_TIMEOUT = 0.2
    before = unavailable("statement_timeout")
    async with items_locked():
        status, headers, body = await request(application, "GET", "/api/items")
    assert_retry_later(status, headers, body)
    assert unavailable("statement_timeout") == before + 1
    found = await reads.pool()
    stats = database_server.stats(found)
    assert stats["pool_available"] == stats["pool_size"]


def test_djangos_own_connections_have_the_time_limit_too(settings):
    """Writes and tasks run on Django's connections (config/settings.py)."""
    connection = connections["default"]
    with connection.cursor() as cursor:
        if connection.mysql_is_mariadb:
            cursor.execute("SELECT @@max_statement_time")
            wanted = settings.DATABASE_STATEMENT_TIMEOUT
        else:
            cursor.execute("SELECT @@max_execution_time")
            wanted = settings.DATABASE_STATEMENT_TIMEOUT * 1000
        assert float(cursor.fetchone()[0]) == wanted


async def test_pools_are_sampled_and_reads_timed(item_payload, settings):
    def sample(metric: str, **labels) -> float | None:
        return REGISTRY.get_sample_value(metric, {"alias": "default", **labels})

    waits = sample("django_db_pool_wait_seconds_count") or 0
    assert (await request(application, "POST", "/api/items", item_payload))[0] == 201
    assert (await request(application, "GET", "/api/items", token=None))[0] == 200
    sampler.sample_pools()
    # Between reads every connection of the asyncio pool is back in it.
    assert sample("django_db_pool_connections", pool="async", state="busy") == 0
    assert sample("django_db_pool_connections", pool="async", state="idle") >= 1
    assert sample("django_db_pool_waiting", pool="async") == 0
    maximum = settings.DATABASE_READ_POOL["max_size"]
    assert sample("django_db_pool_max_connections", pool="async") == maximum
    # The write's API key, then the public listing's three reads: count, items, tags.
    assert sample("django_db_pool_wait_seconds_count") == waits + 1 + 3


async def test_connections_killed_by_the_server_cost_no_request(
    fresh_pools, item_payload
):
    found = await reads.pool()
    held = [await found.pool.acquire() for _ in range(3)]
    ids = [(await _one(connection, "SELECT CONNECTION_ID()"))[0] for connection in held]
    for connection in held:
        found.pool.release(connection)
    killer = await _connect()
    try:
        # What a server restart or a failover does to every pooled connection.
        for connection_id in ids:
            await _one(killer, f"KILL CONNECTION {int(connection_id)}")
    finally:
        killer.close()
    await asyncio.sleep(0.1)  # the event loop reads each connection's end
    # The pool checks a connection before lending it and replaces a dead one;
    # Django's kept connections are pinged before reuse (CONN_HEALTH_CHECKS).
    assert (await request(application, "GET", "/api/items"))[0] == 200
    assert (await request(application, "POST", "/api/items", item_payload))[0] == 201


async def test_a_server_that_is_down_answers_503_within_the_pool_timeout(
    fresh_pools, settings, monkeypatch
):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        nothing_listens = sock.getsockname()[1]
    database = connections["default"].settings_dict
    monkeypatch.setitem(database, "HOST", "127.0.0.1")
    monkeypatch.setitem(database, "PORT", str(nothing_listens))
    settings.DATABASE_READ_POOL = {**settings.DATABASE_READ_POOL, "timeout": 0.5}
    started = time.monotonic()
    status, headers, body = await request(application, "GET", "/api/items")
    waited = time.monotonic() - started
    assert_retry_later(status, headers, body)
    assert waited < 5


@pytest.mark.parametrize(
    ("method", "body"),
    [("GET", None), ("POST", {"name": "n", "category": "new", "price": "1"})],
)
async def test_a_statement_cut_off_by_the_server_answers_503_and_writes_nothing(
    method, body
):
    before = unavailable("connection")
    async with items_locked() as waiting_reads:
        answer = asyncio.create_task(request(application, method, "/api/items", body))
        await until(waiting_reads, 1)
        # What a restart or KILL does to a statement in flight.
        row = await _one(
            waiting_reads.watcher,
            "SELECT ID FROM information_schema.PROCESSLIST"
            " WHERE DB = DATABASE() AND STATE LIKE 'Waiting for table%%'"
            " AND ID <> %s",
            [waiting_reads.id],
        )
        await _one(waiting_reads.watcher, f"KILL CONNECTION {int(row[0])}")
        status, headers, response = await asyncio.wait_for(answer, 10)
    assert_retry_later(status, headers, response)
    assert unavailable("connection") == before + 1
    # The write's transaction was rolled back whole: not even its new category.
    status, _, categories = await request(application, "GET", "/api/categories")
    assert (status, categories["categories"]) == (200, [])
