"""Stopping and restarting app servers behind Nginx: nothing in flight is lost."""

import http.client
import json
import shutil
import signal
import socket
import sqlite3
import struct
import threading
import time
from contextlib import ExitStack, closing

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


def post_item(nginx: Nginx, name: str, **headers: str) -> int:
    response, _ = request(
        nginx,
        "POST",
        "/api/items",
        {"name": name, "category": "c", "price": "1"},
        headers,
    )
    return response.status


def stored_items(workdir) -> dict[str, int]:
    """How many items of each name the apps' SQLite database (in `workdir`) has."""
    with closing(sqlite3.connect(workdir / "db.sqlite3")) as database:
        return dict(
            database.execute("SELECT name, COUNT(*) FROM items_item GROUP BY name")
        )


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
    combination, started, tmp_path
):
    """Stopped without being drained at Nginx first: a stopping instance resets
    the requests it had not read, which Nginx sends to the other instance, a
    write only when it carries an Idempotency-Key (deploy/nginx/), as the
    client here does."""
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
            number = len(results)
            try:
                if number % 2:
                    item = {"name": f"r{number}", "category": "c", "price": "1"}
                    connection.request(
                        "POST",
                        "/api/items",
                        json.dumps(item),
                        {**headers, "Idempotency-Key": f"r{number}"},
                    )
                else:
                    connection.request("GET", "/api/items?limit=1", headers=headers)
                response = connection.getresponse()
                results.append((number, response.status, response.read()[:200]))
            except OSError as error:
                results.append((number, repr(error), b""))
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
    failures = [result for result in results if result[1] not in (200, 201)]
    assert failures == [], nginx.output()[-3000:]
    created = [f"r{number}" for number, status, _ in results if status == 201]
    assert len(created) > 25
    # The loop is the only writer of this database.
    assert stored_items(tmp_path) == dict.fromkeys(created, 1)


class Resetter:
    """Stands for an instance that stops with requests it had not read: it takes
    each connection, reads what comes, and resets it."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.upstream = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.resets = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return  # closed
            with connection:
                connection.recv(65536)
                # Closed with unread data or no linger: an RST, not a FIN.
                connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
            self.resets += 1

    def close(self) -> None:
        self.listener.close()


@pytest.mark.parametrize("combination", params(each_server()[:1]))
def test_a_write_an_instance_reset_is_sent_again_only_with_an_idempotency_key(
    combination, generated, tmp_path
):
    """Nginx sends each request to the resetting instance and the app in turn.
    A write it reset is answered 503 (the app never saw it), unless it carries
    an Idempotency-Key: then it goes to the app, and is created once."""
    with ExitStack() as cleanup:
        project = generated(combination)
        app = App(project, tmp_path, "app")
        app.migrate()
        cleanup.callback(app.stop)
        app.start()
        resetter = Resetter()
        cleanup.callback(resetter.close)
        nginx = Nginx.in_front(project, [resetter, app])
        nginx.start()
        cleanup.callback(nginx.stop)

        def post(name: str, **headers: str) -> int:
            status = post_item(nginx, name, **headers)
            # Past fail_timeout (1 s), which kept Nginx off the resetter.
            time.sleep(1.2)
            return status

        keyed = [post(f"keyed-{n}", **{"Idempotency-Key": f"k{n}"}) for n in range(6)]
        keyed_resets = resetter.resets
        unkeyed = [post(f"unkeyed-{n}") for n in range(6)]
        assert keyed == [201] * 6
        assert keyed_resets > 0, "the resetter took no keyed write"
        assert set(unkeyed) == {201, 503}
        # Each 503 is a write the resetter took, which reached no app.
        assert resetter.resets - keyed_resets == unkeyed.count(503)
        written = [f"keyed-{n}" for n in range(6)] + [
            f"unkeyed-{n}" for n, status in enumerate(unkeyed) if status == 201
        ]
        assert stored_items(tmp_path) == dict.fromkeys(written, 1)


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
