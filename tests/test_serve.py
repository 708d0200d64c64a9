"""bin/serve starts every server choice for real: lifespan, HTTP, graceful stop.

The deeper edge tests (Nginx in front, slow clients, restarts) build on this.
"""

import http.client
import json
import signal
import time
from contextlib import ExitStack

import pytest

from edge import App, bearer, request
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
    server may be writing the last one."""
    complete = app.output().rpartition("\n")[0].splitlines()
    messages = [json.loads(line) for line in complete]
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
    above the app's caps.)"""
    streams = 140
    app = App(
        generated(combination),
        tmp_path,
        "server",
        WEB_CONCURRENCY="1",
        BACKLOG="128",
        SSE_MAX_STREAMS=str(streams),
    )
    app.migrate()
    app.start()
    with ExitStack() as held:
        held.callback(app.stop)

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
