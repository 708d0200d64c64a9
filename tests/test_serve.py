"""bin/serve starts every server choice for real: lifespan, HTTP, graceful stop.

The deeper edge tests (Nginx in front, slow clients, restarts) build on this.
"""

import http.client
import json
import signal
import socket
import subprocess
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from edge import ORIGIN, App, EventStream, Process, bearer, descendants, request
from matrix import each_server, params


def get_json(app: App, method: str, path: str, body=None) -> tuple[int, dict]:
    response, content = request(app, method, path, body)
    return response.status, json.loads(content)


def log_messages(app: App) -> list[tuple[str, str]]:
    # Every line, the server's own included, is one JSON object.
    lines = [json.loads(line) for line in app.output().splitlines()]
    return [(line["logger"], line["message"]) for line in lines]


def workers_started(app: App) -> int:
    """Workers through their lifespan startup so far: complete lines only, the
    server may be writing the last one. Only the JSON ones: a Granian worker
    that stops can panic as its runtime is dropped ("Cannot drop pointer into
    Python heap without the thread being attached", emmett-framework/granian#799
    and #884; seen once in 2.8.7 on a recycled worker, after it had drained), and
    the panic and the worker's stacks are plain text."""
    complete = app.output().rpartition("\n")[0].splitlines()
    messages = [json.loads(line) for line in complete if line.startswith("{")]
    return sum(
        (line["logger"], line["message"]) == ("core.lifespan", "started")
        for line in messages
    )


@pytest.mark.parametrize("combination", params(each_server()))
def test_entry_script_serves_and_stops_gracefully(
    combination, generated, redis_database, tmp_path
):
    app = App(
        generated(combination),
        tmp_path,
        "server",
        WEB_CONCURRENCY="2",
        REDIS_URL=redis_database(),
    )
    app.migrate()
    app.start()
    try:
        with app.stacks_on_failure():
            # Both workers up before the stop: one still starting when the server
            # stops is killed, not stopped (Granian's supervisor).
            deadline = time.monotonic() + 60
            while workers_started(app) < 2:
                assert time.monotonic() < deadline, app.output()
                time.sleep(0.1)
            assert get_json(app, "GET", "/readyz") == (
                200,
                {"status": "ready", "checks": {"database": "ok", "redis": "ok"}},
            )
            status, item = get_json(
                app, "POST", "/api/items", {"name": "a", "category": "b", "price": "2"}
            )
            assert status == 201
            assert get_json(app, "GET", f"/api/items/{item['id']}") == (200, item)
    finally:
        code = app.stop()
    messages = log_messages(app)
    # Each of the two workers went through the ASGI lifespan both ways.
    assert messages.count(("core.lifespan", "started")) == 2, app.output()
    assert messages.count(("core.lifespan", "stopped")) == 2, app.output()
    assert code == 0, app.output()


@pytest.mark.parametrize("combination", params(each_server()))
def test_a_worker_holding_its_streams_still_answers_and_refuses_the_next(
    combination, generated, tmp_path
):
    """A worker that holds SSE_MAX_STREAMS event streams answers its probes and
    other requests, and the next stream gets the app's 503, never a wait. (Granian
    serves at most --backpressure connections per worker and leaves the next
    unanswered; by default BACKLOG / WEB_CONCURRENCY, 128 here: bin/serve sets it
    above the app's caps.) A WebSocket past WEBSOCKET_MAX_CONNECTIONS gets the
    same 503: each server lets the app answer a handshake (items.consumers)."""
    streams = 140
    app = App(
        generated(combination),
        tmp_path,
        "server",
        WEB_CONCURRENCY="1",
        BACKLOG="128",
        SSE_MAX_STREAMS=str(streams),
        WEBSOCKET_MAX_CONNECTIONS="1",
    )
    app.migrate()
    app.start()
    with ExitStack() as held:
        held.callback(app.stop)
        held.enter_context(app.stacks_on_failure())

        def stream() -> http.client.HTTPResponse:
            connection = http.client.HTTPConnection("127.0.0.1", app.port, timeout=10)
            held.callback(connection.close)
            connection.request("GET", "/api/items/events", headers=bearer(app.token))
            return connection.getresponse()

        opened = [stream() for _ in range(streams)]
        assert {response.status for response in opened} == {200}
        response, content = request(app, "GET", "/healthz")
        assert response.status == 200, content
        response, content = request(app, "GET", "/api/items?limit=1")
        assert response.status == 200, content
        refused = stream()
        assert refused.status == 503, refused.read()
        assert refused.headers["Retry-After"]

        url = f"ws://127.0.0.1:{app.port}/ws/items"
        held.enter_context(connect(url, additional_headers=ORIGIN, open_timeout=10))
        with pytest.raises(InvalidStatus) as denied:
            connect(url, additional_headers=ORIGIN, open_timeout=10)
        answer = denied.value.response
        assert answer.status_code == 503, answer
        assert answer.headers["Retry-After"] == "1"
        assert json.loads(answer.body)["error"] == "too_many_connections"


@pytest.mark.parametrize("combination", params(each_server()[:1]))
def test_without_redis_one_worker_serves_and_says_why(combination, generated, tmp_path):
    """The in-memory channel layer cannot carry an event from one worker to the
    event streams of another: bin/serve starts one, whatever WEB_CONCURRENCY says."""
    app = App(generated(combination), tmp_path, "server", WEB_CONCURRENCY="2")
    app.migrate()
    app.start()
    try:
        assert get_json(app, "GET", "/readyz")[0] == 200
    finally:
        code = app.stop()
    messages = log_messages(app)
    assert (
        "bin.serve",
        "REDIS_URL is not set: 1 worker instead of 2 (WEB_CONCURRENCY), "
        "because events reach other workers through Redis only",
    ) in messages, app.output()
    assert messages.count(("core.lifespan", "started")) == 1, app.output()
    # A single Uvicorn process re-raises SIGTERM once its graceful shutdown is done.
    assert code in (0, -signal.SIGTERM), app.output()


@pytest.mark.parametrize("combination", params(each_server()[:1]))
def test_a_stray_env_file_does_not_configure_the_server(
    combination, generated, tmp_path
):
    """bin/serve reads no .env unless told to: the local one beside it says
    DJANGO_DEBUG=true, and a production environment does not mention DEBUG."""
    project = generated(combination)
    assert "DJANGO_DEBUG=true" in (project / ".env").read_text().splitlines()
    # A production environment names its hosts: without DEBUG there is no default.
    app = App(
        project,
        tmp_path,
        "server",
        DJANGO_SECRET_KEY="a-secret-" + "x" * 50,
        DJANGO_ALLOWED_HOSTS="127.0.0.1",
    )
    # Unset, as in every deployment's environment.
    del app.env["DJANGO_READ_DOT_ENV"]
    app.migrate()
    app.start()
    try:
        # Not DEBUG: plain HTTP to the API is redirected to HTTPS.
        response, _ = request(app, "GET", "/api/items")
    finally:
        app.stop()
    assert response.status == 301, app.output()
    assert response.getheader("Location").startswith("https://"), app.output()


@pytest.mark.parametrize(
    "combination",
    params([each for each in each_server() if each["server"] == "granian"]),
)
@pytest.mark.parametrize("taken", ["port", "granian_metrics_port"])
def test_granian_is_not_started_on_a_port_another_server_listens_on(
    combination, taken, generated, tmp_path
):
    """Granian's workers listen with SO_REUSEPORT, so a second server on a taken
    port would start and share its traffic; with its exporter's port taken, its
    workers would start and never answer. The other server here is a socket
    listening with SO_REUSEPORT, as another Granian's workers do."""
    app = App(generated(combination), tmp_path, "server", WEB_CONCURRENCY="1")
    port = getattr(app, taken)
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", port))
        other.listen()
        Process.start(app)
        try:
            code = app.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"started with a taken port:\n{app.output()}")
        finally:
            app.stop()
    assert code == 1, app.output()
    message = f"127.0.0.1:{port} is taken (Address already in use): not started"
    assert log_messages(app) == [("bin.serve", message)]


@pytest.mark.parametrize(
    "combination",
    params([each for each in each_server() if each["server"] == "granian"]),
)
def test_granian_starts_its_workers_by_spawn_not_by_fork(
    combination, generated, tmp_path
):
    """A worker forked while Granian's main process ran its metrics thread could
    wait forever on what that thread held, listening and never accepting
    (bin/serve): each worker is a new interpreter (multiprocessing's spawn), not a
    copy of the main process."""
    app = App(generated(combination), tmp_path, "server", WEB_CONCURRENCY="1")
    with ExitStack() as held:
        held.callback(app.stop)
        app.start()
        main = app.process.pid
        [worker] = [
            int(line["message"].rpartition(" ")[2])
            for line in map(json.loads, app.output().splitlines())
            if line["message"].startswith("Spawning worker-1 with PID")
        ]
        assert worker in descendants(main)
        command = Path(f"/proc/{worker}/cmdline").read_bytes().split(b"\0")
        assert command != Path(f"/proc/{main}/cmdline").read_bytes().split(b"\0")
        assert b"--multiprocessing-fork" in command, command
        assert any(b"spawn_main" in part for part in command), command


# The reconnect delay a stopping worker gives each client: 1 s to
# RECONNECT_SPREAD_SECONDS (core.shutdown).
SPREAD_SECONDS = 1.5


@pytest.mark.parametrize("combination", params(each_server()))
def test_workers_over_their_memory_limit_drain_and_their_clients_miss_no_event(
    combination, generated, redis_database, tmp_path
):
    """Each worker is over a 1 MiB limit from its start, so each is recycled
    after 2 s (by Granian's supervisor, or by itself) over and over while items
    are created: see recycled_under_writes()."""
    recycled_under_writes(
        generated(combination),
        tmp_path,
        REDIS_URL=redis_database(),
        WORKER_MAX_RSS_MB="1",
        WORKER_MAX_RSS_SECONDS="2",
    )


# Granian recycles by age (WORKERS_LIFETIME, at least 60 s), not request count.
@pytest.mark.parametrize(
    "combination",
    params([c for c in each_server() if c["server"] != "granian"]),
)
def test_workers_at_their_request_count_drain_and_their_clients_miss_no_event(
    combination, generated, redis_database, tmp_path
):
    """Each worker is recycled after 25 requests (MAX_REQUESTS), over and over
    while items are created: see recycled_under_writes()."""
    recycled_under_writes(
        generated(combination),
        tmp_path,
        REDIS_URL=redis_database(),
        MAX_REQUESTS="25",
        MAX_REQUESTS_JITTER="5",
    )


def recycled_under_writes(project, tmp_path, **env) -> None:
    """Two workers, recycled as `env` says, at least twice each while items are
    created. The event streams and WebSockets of a recycled worker are told to
    reconnect after a delay, and do, with the id of the last event they got:
    every client gets every item's event once and in order, and every write
    succeeds."""
    app = App(
        project,
        tmp_path,
        "server",
        WEB_CONCURRENCY="2",
        RECONNECT_SPREAD_SECONDS=str(SPREAD_SECONDS),
        **env,
    )
    app.migrate()
    app.start()
    created = []
    with ExitStack() as held:
        held.callback(app.stop)
        held.enter_context(app.stacks_on_failure())
        pool = held.enter_context(ThreadPoolExecutor(6))
        ready = threading.Barrier(7, timeout=60)
        last = "the-last-item"
        # Each cycle takes a few seconds.
        deadline = time.monotonic() + 90
        followers = [follow_stream] * 3 + [follow_websocket] * 3
        clients = [pool.submit(f, app, ready, last, deadline + 60) for f in followers]
        ready.wait()
        while workers_started(app) < 6:
            assert time.monotonic() < deadline, app.output()
            created.append(create_item(app, f"item-{len(created)}"))
            time.sleep(0.1)
        created.append(create_item(app, last))
        received = [client.result() for client in clients]
    for names, delays in received:
        assert names == created
        # Each client was on a worker that was recycled, and told when to come back.
        assert delays, "a client was never told to reconnect"
        assert all(1000 <= delay <= SPREAD_SECONDS * 1000 for delay in delays), delays


def create_item(app: App, name: str) -> str:
    """Creates an item; returns its name. A connection that a stopping worker
    had queued is reset (Granian without the tcp_migrate_req sysctl): the write
    is sent again with the same Idempotency-Key, as the API asks of clients."""
    headers = {"Idempotency-Key": str(uuid.uuid4())}
    body = {"name": name, "category": "c", "price": "1"}
    for _ in range(5):
        try:
            response, content = request(app, "POST", "/api/items", body, headers)
        except ConnectionError:
            time.sleep(0.2)
            continue
        assert response.status == 201, content
        return name
    pytest.fail(f"the write of {name} was reset 5 times")


def follow_stream(app: App, ready: threading.Barrier, last: str, deadline: float):
    """A client of the items' event stream, as EventSource is: it reconnects
    after the last `retry` the stream sent, with Last-Event-ID, until it gets the
    `last` item (before `deadline`). Returns the names of the items created, in
    the order received, and the delays that the streams which ended gave it."""
    names, delays, last_id, subscribed = [], [], None, False
    while True:
        assert time.monotonic() < deadline, f"no {last} after {names}"
        try:
            stream = EventStream(app, last_id)
        except ConnectionError:
            time.sleep(0.2)  # as create_item()
            continue
        assert stream.response.status == 200, stream.response.status
        retry = None
        try:
            while (event := stream.next()) is not None:
                if not subscribed:
                    subscribed = True
                    ready.wait()  # its first `retry` came: the first write may too
                if "retry" in event:
                    retry = int(event["retry"])
                last_id = stream.last_id
                if event.get("event") == "item.created":
                    names.append(json.loads(event["data"])["name"])
                    if names[-1] == last:
                        return names, delays
        finally:
            stream.close()
        # Ended by its worker, which sent the delay last (the first `retry`, 3 s,
        # is for a connection lost).
        assert retry != 3000, "a stream ended without a reconnect delay"
        delays.append(retry)
        time.sleep(retry / 1000)


def follow_websocket(app: App, ready: threading.Barrier, last: str, deadline: float):
    """A client of the items' WebSocket: told to reconnect (a "reconnect"
    message, then 1001), it does after `retry_ms`, with `last_event_id`, until it
    gets the `last` item. Returns as follow_stream() does."""
    names, delays, last_id, welcomed = [], [], None, False
    while True:
        assert time.monotonic() < deadline, f"no {last} after {names}"
        query = f"?last_event_id={last_id}" if last_id else ""
        retry_ms = None
        try:
            with connect(
                f"ws://127.0.0.1:{app.port}/ws/items{query}",
                additional_headers=ORIGIN,
                open_timeout=10,
            ) as websocket:
                while True:
                    message = json.loads(websocket.recv(timeout=30))
                    if message["type"] == "welcome" and not welcomed:
                        welcomed = True
                        ready.wait()
                    elif message["type"] == "reconnect":
                        retry_ms = message["retry_ms"]
                    elif message["type"] == "event":
                        last_id = message["id"]
                        if message["event"] == "item.created":
                            names.append(message["data"]["name"])
                            if names[-1] == last:
                                return names, delays
        except ConnectionClosed as closed:
            close = closed.rcvd
        except ConnectionError:
            time.sleep(0.2)  # as create_item()
            continue
        assert retry_ms is not None, f"closed without a reconnect delay: {close}"
        assert close is not None
        assert close.code == 1001, close
        delays.append(retry_ms)
        time.sleep(retry_ms / 1000)
