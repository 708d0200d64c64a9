"""Stopping and restarting app servers behind Nginx: nothing in flight is lost."""

import http.client
import json
import shutil
import signal
import sqlite3
import threading
import time
from contextlib import ExitStack

import pytest
from websockets.sync.client import connect

from edge import (
    ORIGIN,
    App,
    Nginx,
    bearer,
    readable_tempdir,
    receive_until_closed,
    request,
    serve_instances,
)
from matrix import each_server, params

SERVERS = params(each_server())
# A single Uvicorn process re-raises SIGTERM once its graceful shutdown is done.
STOPPED_GRACEFULLY = (0, -signal.SIGTERM)


def post_item(nginx: Nginx, name: str) -> int:
    response, _ = request(
        nginx, "POST", "/api/items", {"name": name, "category": "c", "price": "1"}
    )
    return response.status


@pytest.fixture
def started(generated, redis_database, tmp_path):
    """Starts apps and their Nginx for one test, and stops whatever is left."""
    with ExitStack() as cleanup:

        def start(combination: dict, count: int, **env: str) -> tuple[list[App], Nginx]:
            # The instances of one deployment share its Redis: its channel layer.
            return serve_instances(
                cleanup,
                generated(combination),
                tmp_path,
                count,
                REDIS_URL=redis_database(),
                **env,
            )

        yield start


@pytest.mark.parametrize("combination", SERVERS)
def test_sigterm_finishes_requests_and_closes_streams_cleanly(
    combination, started, tmp_path
):
    (app,), nginx = started(combination, 1, WEB_CONCURRENCY="2", GRACEFUL_TIMEOUT="10")
    # A worker that never answers: where its threads were is printed.
    with (
        app.stacks_on_failure(),
        connect(
            f"ws://127.0.0.1:{nginx.port}/ws/items", additional_headers=ORIGIN
        ) as websocket,
    ):
        assert json.loads(websocket.recv(timeout=10))["type"] == "welcome"
        events = http.client.HTTPConnection("127.0.0.1", nginx.port, timeout=30)
        events.request("GET", "/api/items/events")
        stream = events.getresponse()
        assert b"retry:" in stream.read1()

        # A request held in flight by the database: the test holds SQLite's write lock.
        lock = sqlite3.connect(tmp_path / "db.sqlite3", isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")
        statuses = []
        in_flight = threading.Thread(
            target=lambda: statuses.append(post_item(nginx, "x"))
        )
        in_flight.start()
        time.sleep(1)
        app.process.terminate()
        time.sleep(1)
        lock.execute("COMMIT")
        in_flight.join(timeout=30)
        assert statuses == [201]

        messages, code = receive_until_closed(websocket, timeout=10)
        assert code == 1001
        # Told when to reconnect, last (the write's event may come before).
        assert messages[-1]["type"] == "reconnect", messages
        assert messages[-1]["retry_ms"] >= 1000
        # The stream ends with its last chunk (read() raises IncompleteRead
        # otherwise): the delay its client reconnects after.
        last = stream.read().rstrip(b"\n").rsplit(b"\n", 1)[-1]
        assert last.startswith(b"retry: "), last
        assert int(last.removeprefix(b"retry: ")) >= 1000
        assert stream.isclosed()
        assert app.process.wait(timeout=30) in STOPPED_GRACEFULLY, app.output()


@pytest.mark.parametrize("combination", SERVERS)
def test_restarting_instances_one_after_the_other_fails_no_request(
    combination, started
):
    apps, nginx = started(combination, 2, WEB_CONCURRENCY="1", GRACEFUL_TIMEOUT="10")
    results = []
    done = threading.Event()
    headers = {"Content-Type": "application/json", **bearer(nginx.token)}

    def client_loop():
        deadline = time.monotonic() + 120
        while (
            not done.is_set() and time.monotonic() < deadline and len(results) < 20000
        ):
            connection = http.client.HTTPConnection("127.0.0.1", nginx.port, timeout=10)
            # Writes too: Nginx retries a GET on the other instance, not a POST.
            number = len(results)
            try:
                if number % 2:
                    item = {"name": f"r{number}", "category": "c", "price": "1"}
                    connection.request("POST", "/api/items", json.dumps(item), headers)
                else:
                    connection.request("GET", "/api/items?limit=1", headers=headers)
                results.append(connection.getresponse().status)
            except OSError as error:
                results.append(repr(error))
            finally:
                connection.close()
            # Steady, and under Nginx's per-client rate limit (50 r/s).
            time.sleep(0.03)

    client = threading.Thread(target=client_loop)
    client.start()
    try:
        for app in apps:
            time.sleep(1)
            assert app.stop() in STOPPED_GRACEFULLY, app.output()
            app.start()
            # Nginx counts the refused connections as a failure and skips the
            # instance for fail_timeout (1 s here): let that pass before the next.
            time.sleep(2)
    finally:
        done.set()
        client.join()
    failures = [result for result in results if result not in (200, 201)]
    assert failures == []
    assert results.count(201) > 25


@pytest.mark.parametrize("combination", SERVERS)
def test_nginx_reaches_the_app_over_a_unix_socket(combination, generated, tmp_path):
    project = generated(combination)
    sockets = readable_tempdir("edge-sockets-")
    app = App(project, tmp_path, "app", socket=sockets / "app.sock")
    app.migrate()
    app.start()
    try:
        nginx = Nginx.in_front(project, [app])
        nginx.start()
        try:
            assert post_item(nginx, "over a socket") == 201
        finally:
            nginx.stop()
    finally:
        app.stop()
        shutil.rmtree(sockets)
