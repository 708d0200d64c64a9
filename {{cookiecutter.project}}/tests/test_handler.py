"""The request path through core.handler: no thread and no thread hop unless the
request runs sync code (a write; a read on SQLite), database reads on PostgreSQL
and cache reads without either, database connections closed in the thread that
opened them, no garbage left for the collector, and exceptions still logged and
counted."""

import asyncio
import gc
import io
import json
import threading
import weakref

import pytest
from asgiref import sync
from asgiref.sync import sync_to_async
from django.core import signals
from django.core.handlers.asgi import ASGIHandler as StockASGIHandler
from django.core.handlers.asgi import ASGIRequest
from django.db import connections
from django.http import HttpResponseNotFound
from django.urls.resolvers import URLResolver
from prometheus_client import REGISTRY

from config.asgi import application
from core import auth, reads
from core import handler as core_handler
from core.handler import ASGIHandler, RequestThreads, close_connections
from items import store
from items.schemas import ItemIn
from tests.asgi import exchange, http_scope, next_chunk, open_stream

pytestmark = pytest.mark.django_db(transaction=True)


async def get(app, path: str, method: str = "GET") -> tuple[int, bytes]:
    start, body = await exchange(app, method, path)
    return start["status"], body


@pytest.fixture
def thread_use(monkeypatch):
    """Counts threads started and sync_to_async calls made."""
    counts = {"threads": 0, "hops": 0}
    start, call = threading.Thread.start, sync.SyncToAsync.__call__

    def counting_start(thread):
        counts["threads"] += 1
        return start(thread)

    async def counting_call(self, *args, **kwargs):
        counts["hops"] += 1
        return await call(self, *args, **kwargs)

    monkeypatch.setattr(threading.Thread, "start", counting_start)
    monkeypatch.setattr(sync.SyncToAsync, "__call__", counting_call)
    return counts


async def test_an_async_request_stays_in_the_event_loop(thread_use):
    assert await get(application, "/healthz") == (200, b'{"status": "ok"}')
    assert thread_use == {"threads": 0, "hops": 0}


async def test_django_stock_handler_would_start_threads_and_hop(thread_use):
    # What core.handler saves on every request: the counting above sees it.
    assert (await get(StockASGIHandler(), "/healthz"))[0] == 200
    assert thread_use["hops"] == 2
    assert thread_use["threads"] >= 1


async def test_connections_stay_in_the_thread_that_used_them(monkeypatch):
    wrapper = type(connections["default"])
    opened, closed = [], []
    ensure_connection, close = wrapper.ensure_connection, wrapper.close

    def recording_ensure_connection(connection):
        opened.append(threading.current_thread())
        return ensure_connection(connection)

    def recording_close(connection):
        if connection.connection is not None:
            closed.append(threading.current_thread())
        return close(connection)

    monkeypatch.setattr(wrapper, "ensure_connection", recording_ensure_connection)
    monkeypatch.setattr(wrapper, "close", recording_close)
    # SQLite's and MySQL's connections are kept (CONN_MAX_AGE), PostgreSQL's pooled.
    kept = connections["default"].vendor in ("sqlite", "mysql")
    for _ in range(2):
        closes = len(closed)
        # A write: its one transaction runs in the request's thread.
        assert (await get(application, "/api/items/1", "DELETE"))[0] == 404
        if kept:
            # The request thread keeps its connection for the next request.
            assert len(closed) == closes
        else:
            # PostgreSQL: each request's connection goes back to the pool at
            # request_finished, in the thread that took it.
            assert len(closed) > closes
    assert opened
    assert threading.current_thread() not in opened
    if kept:
        # Both requests ran in the one kept thread, on its one connection.
        assert len(set(opened)) == 1
    else:
        assert set(closed) == set(opened)


async def test_shutdown_closes_the_connections_request_threads_keep():
    assert (await get(application, "/api/items/1", "DELETE"))[0] == 404

    def open_connections() -> int:
        def held() -> bool:
            return connections["default"].connection is not None

        workers = list(core_handler._WORKERS)
        return sum(worker.submit(held).result() for worker in workers)

    if connections["default"].vendor in ("sqlite", "mysql"):
        assert open_connections() >= 1  # kept for the next request
    await asyncio.to_thread(close_connections)
    assert open_connections() == 0


async def test_request_threads_are_kept_for_later_requests(thread_use):
    for _ in range(3):
        assert (await get(application, "/api/items/1", "DELETE"))[0] == 404
    # Django's own handler starts two threads per request.
    assert thread_use["threads"] <= 1


async def test_a_process_runs_sync_code_in_at_most_request_threads(monkeypatch):
    """Five requests whose sync code blocks, on a handler of two threads: two run,
    three wait (counted) without a thread of their own, and each gets one that
    an earlier request gives back."""
    handler = ASGIHandler()
    handler.threads = RequestThreads(limit=2)
    lock, release = threading.Lock(), threading.Event()
    running, used = set(), set()

    def blocking():
        with lock:
            running.add(threading.get_ident())
            used.add(threading.get_ident())
        release.wait(10)
        with lock:
            running.discard(threading.get_ident())

    original = store.stats

    async def stats():
        await sync_to_async(blocking)()
        return await original()

    monkeypatch.setattr(store, "stats", stats)

    def waits() -> float:
        return REGISTRY.get_sample_value("django_request_thread_waits_total") or 0

    before = waits()
    requests = [asyncio.create_task(get(handler, "/api/items/stats")) for _ in range(5)]
    for _ in range(500):  # bounded: 5 s for all five to start or queue
        if len(running) == 2 and waits() == before + 3:
            break
        await asyncio.sleep(0.01)
    assert (len(running), waits() - before) == (2, 3)
    assert len(handler.threads.queue) == 3
    release.set()
    assert [status for status, _ in await asyncio.gather(*requests)] == [200] * 5
    assert len(used) == handler.threads.started == 2
    assert len(handler.threads.idle) == 2
    # Before this handler's threads end with it: SQLite's connections are kept.
    await asyncio.to_thread(close_connections)


async def test_a_stream_gives_its_thread_back_before_its_body(monkeypatch):
    """An event stream whose request ran sync code (its API key read on SQLite,
    here on any database) holds no thread while it streams: on a handler of one
    thread, a write still gets it, and no wait is counted."""
    handler = ASGIHandler()
    handler.threads = RequestThreads(limit=1)
    original = auth.authenticate

    async def authenticate_in_a_thread(authorization):
        await sync_to_async(threading.get_ident)()
        return await original(authorization)

    monkeypatch.setattr(auth, "authenticate", authenticate_in_a_thread)
    stream, start = await open_stream(handler, "/api/items/events")
    try:
        assert start["status"] == 200
        assert await next_chunk(stream)  # retry: the body has started
        assert (handler.threads.started, len(handler.threads.idle)) == (1, 1)
        # A write, which runs the ORM in a thread: the stream's.
        assert (await get(handler, "/api/items/1", "DELETE"))[0] == 404
        assert list(handler.threads.queue) == []
    finally:
        await stream.send_input({"type": "http.disconnect"})
        await stream.wait(timeout=5)
    await asyncio.to_thread(close_connections)


async def test_a_stream_holds_neither_its_request_nor_its_headers(monkeypatch):
    """Once an event stream's headers are sent, its request (with its META and
    resolver match) is freed and its response keeps no headers: an idle stream
    holds only what sends its body."""
    handler = ASGIHandler()
    held = {}
    run_get_response = handler.run_get_response

    async def keeping(request):
        response = await run_get_response(request)
        held["request"], held["response"] = weakref.ref(request), response
        return response

    monkeypatch.setattr(handler, "run_get_response", keeping)
    stream, start = await open_stream(handler, "/api/items/events")
    try:
        assert start["status"] == 200
        assert (b"Content-Type", b"text/event-stream") in start["headers"]
        assert await next_chunk(stream)
        assert held["request"]() is None
        assert dict(held["response"].headers) == {}
    finally:
        await stream.send_input({"type": "http.disconnect"})
        await stream.wait(timeout=5)
    await asyncio.to_thread(close_connections)


async def test_a_closed_response_closes_its_request_if_still_held(monkeypatch):
    """The request's closer, which no longer keeps it alive, still closes it
    (its uploaded files) when something else holds it, as a stream's body may."""
    closed = []
    monkeypatch.setattr(ASGIRequest, "close", lambda request: closed.append(request))
    handler = ASGIHandler()
    request, _ = handler.create_request(http_scope("/healthz", "GET"), io.BytesIO())
    response = await handler.get_response_async(request)
    response.close()
    assert closed == [request]


def test_a_waiting_request_queues_once_for_all_its_sync_calls():
    """Two sync calls of one request made while it waits (gathered): one place in
    the queue, one wait counted, and both run on the thread it then gets."""
    threads = RequestThreads(limit=1)
    first, second = threads.lend(), threads.lend()
    assert first.submit(threading.get_ident).result(timeout=5)

    def waits() -> float:
        return REGISTRY.get_sample_value("django_request_thread_waits_total") or 0

    before = waits()
    calls = [second.submit(threading.get_ident) for _ in range(2)]
    assert (list(threads.queue), waits() - before) == ([second], 1)
    threads.give_back(first)
    assert len({call.result(timeout=5) for call in calls}) == 1
    threads.give_back(second)
    assert (threads.started, len(threads.idle), list(threads.queue)) == (1, 1, [])


@pytest.mark.skipif(
    not reads.native("default"),
    reason="needs PostgreSQL (DATABASE_URL): on SQLite reads run in a thread",
)
async def test_database_reads_start_no_thread_and_make_no_hop(thread_use, item_payload):
    created = await store.create_item(ItemIn(**item_payload))
    thread_use.update(threads=0, hops=0)
    for path in (
        "/api/items",
        "/api/items?category=tools&offset=0&limit=5",
        f"/api/items/{created['id']}",  # from the database, then cached
        "/api/items/stats",
        "/api/categories",
        "/api/items/export",
    ):
        status, body = await get(application, path)
        assert status == 200, body
    assert thread_use == {"threads": 0, "hops": 0}


async def test_an_access_token_is_checked_in_the_event_loop(
    thread_use, issuer, item_payload
):
    """An OIDC access token's signature is checked on the JWKS the first request
    fetched, in the loop (core.auth): a cached read with it makes no hop."""
    created = await store.create_item(ItemIn(**item_payload))
    path = f"/api/items/{created['id']}"
    token = issuer.token()
    start, _ = await exchange(application, "GET", path, token=token)
    assert start["status"] == 200
    assert issuer.fetches == 1
    thread_use.update(threads=0, hops=0)
    start, body = await exchange(application, "GET", path, token=token)
    assert (start["status"], json.loads(body)) == (200, created)
    assert thread_use == {"threads": 0, "hops": 0}


async def test_cached_reads_make_no_hop(thread_use, item_payload):
    """A public read, without a token. With one, the key is read from the
    database too: natively on PostgreSQL, in a thread on SQLite (core.reads)."""
    created = await store.create_item(ItemIn(**item_payload))
    path = f"/api/items/{created['id']}"
    assert (await get(application, path))[0] == 200
    thread_use.update(threads=0, hops=0)
    start, body = await exchange(application, "GET", path, token=None)
    assert (start["status"], json.loads(body)) == (200, created)
    assert thread_use == {"threads": 0, "hops": 0}
    if reads.native("default"):
        assert (await get(application, path))[0] == 200
        assert thread_use == {"threads": 0, "hops": 0}


async def test_a_request_leaves_no_garbage_for_the_collector(item_payload):
    # Cyclic garbage waits for the collector, whose passes stop the event loop;
    # a request that made some would pay for them on every request (the handler's
    # docstring). Counted with the collector off, as the objects it finds.
    created = await store.create_item(ItemIn(**item_payload))
    answers = {
        "/healthz": 200,
        "/api/items": 200,
        f"/api/items/{created['id']}": 200,
        "/nowhere": 404,
    }
    for path, status in answers.items():
        assert (await get(application, path))[0] == status
    gc.collect()
    gc.disable()
    try:
        for _ in range(10):
            for path, status in answers.items():
                assert (await get(application, path))[0] == status
        found = gc.collect()
    finally:
        gc.enable()
    assert found == 0


async def test_error_answers_stay_in_the_event_loop(thread_use, caplog):
    status, body = await get(application, "/nowhere")
    assert (status, json.loads(body)["error"]) == (404, "not_found")
    start, _ = await exchange(application, "POST", "/api/items", token=None)
    assert start["status"] == 401
    assert thread_use == {"threads": 0, "hops": 0}
    # Each logged once, by its access line.
    logged = [
        (record.name, getattr(record, "status", None)) for record in caplog.records
    ]
    assert logged == [("core.access", 404), ("core.access", 401)]


async def test_a_projects_own_404_handler_still_runs_in_a_thread(
    thread_use, monkeypatch
):
    # It may render a template or query the database, which the loop must not.
    def project_404(request, exception=None):
        return HttpResponseNotFound(b"the project's own")

    monkeypatch.setattr(
        URLResolver, "resolve_error_handler", lambda resolver, status: project_404
    )
    assert await get(application, "/nowhere") == (404, b"the project's own")
    assert thread_use["hops"] == 1


async def test_unhandled_exceptions_are_logged_and_counted(monkeypatch, caplog):
    async def broken():
        raise RuntimeError("the store is broken")

    monkeypatch.setattr(store, "stats", broken)
    before = REGISTRY.get_sample_value(
        "django_http_exceptions_total", {"type": "RuntimeError"}
    )
    status, _ = await get(application, "/api/items/stats")
    assert status == 500
    after = REGISTRY.get_sample_value(
        "django_http_exceptions_total", {"type": "RuntimeError"}
    )
    assert after == (before or 0) + 1
    assert any(
        record.exc_info and record.exc_info[0] is RuntimeError
        for record in caplog.records
    )


async def test_request_signal_receivers_still_run():
    calls = []

    def sync_receiver(sender, **kwargs):
        calls.append(("sync", threading.get_ident()))

    async def async_receiver(sender, **kwargs):
        calls.append(("async", threading.get_ident()))

    signals.request_started.connect(sync_receiver)
    signals.request_started.connect(async_receiver)
    signals.request_finished.connect(sync_receiver)
    try:
        assert (await get(application, "/healthz"))[0] == 200
    finally:
        signals.request_started.disconnect(sync_receiver)
        signals.request_started.disconnect(async_receiver)
        signals.request_finished.disconnect(sync_receiver)
    loop_thread = threading.get_ident()
    # A project's sync receivers run in a thread, as Django runs them.
    assert sorted(kind for kind, _ in calls) == ["async", "sync", "sync"]
    assert all((thread == loop_thread) == (kind == "async") for kind, thread in calls)
