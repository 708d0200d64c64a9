"""Traces (core.tracing): the real server (bin/serve) exports them with the SDK's
OTLP/HTTP exporter to a receiver of the tests' own (tests.otlp), which decodes
them with opentelemetry-proto; and with no endpoint set, nothing of
OpenTelemetry loads."""

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection
from opentelemetry.proto.trace.v1.trace_pb2 import Span
{%- if cookiecutter.websockets == "yes" %}
from websockets.sync.client import connect as websocket_connect
{%- endif %}

from items.models import Category, Item
from tests import tokens
from tests.otlp import Receiver
from tests.processes import abort_with_stacks, free_port, killed_on_failure, terminate

# A W3C traceparent as Nginx or a calling service would send it.
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01"
ROUTE = "api/items/<item_id:item_id>"


def database_url() -> str:
    """The test database, for the server process."""
    if connection.vendor == "sqlite":
        return f"sqlite:///{connection.settings_dict['NAME']}"
    params = connection.settings_dict
    auth = params["USER"] + (f":{params['PASSWORD']}" if params["PASSWORD"] else "")
    scheme = {"postgresql": "postgres", "mysql": "mysql"}[connection.vendor]
    return f"{scheme}://{auth}@{params['HOST']}:{params['PORT']}/{params['NAME']}"


def call(url: str, headers=None, method="GET", body=None) -> tuple[int, dict]:
    status, _, answer = exchange(url, headers, method, body)
    return status, answer


def exchange(url: str, headers=None, method="GET", body=None) -> tuple:
    """The status, headers and JSON body of the answer, whatever its status."""
    request = urllib.request.Request(  # noqa: S310
        url,
        method=method,
        headers={
            "Content-Type": "application/json",
            **tokens.HEADERS,
            **(headers or {}),
        },
        data=None if body is None else json.dumps(body).encode(),
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return response.status, response.headers, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, error.headers, json.loads(error.read())


def named(headers) -> tuple[str, str, bool]:
    """The trace id, span id and sampled flag of a traceresponse header (W3C
    Trace Context: version 00; the SDK may set the random-id flag beside the
    sampled one)."""
    version, trace_id, span_id, flags = headers["traceresponse"].split("-")
    assert version == "00"
    return trace_id, span_id, bool(int(flags, 16) & 1)


def serve(environment: dict, log: Path) -> tuple[subprocess.Popen, str]:
    """bin/serve with one worker; returns once it answers."""
    port = free_port()
    bin_dir = str(Path(sys.executable).parent)
    with log.open("w") as output:
        server = subprocess.Popen(  # noqa: S603  (our own script)
            [str(settings.BASE_DIR / "bin" / "serve")],
            cwd=settings.BASE_DIR,
            env={
                **os.environ,
                "PATH": f"{bin_dir}:{os.environ['PATH']}",
                "PORT": str(port),
                # Granian's exporter: one port per server (its default, 9400,
                # would be shared by every suite running at once).
                "GRANIAN_METRICS_PORT": str(free_port()),
                "WEB_CONCURRENCY": "1",
                "DATABASE_URL": database_url(),
                "DJANGO_SETTINGS_MODULE": "config.settings",
                # Production settings: the test's requests name 127.0.0.1, which
                # only DEBUG allows by default.
                "DJANGO_ALLOWED_HOSTS": "127.0.0.1",
                "PYTHONFAULTHANDLER": "1",  # tests.processes.abort_with_stacks
{%- if cookiecutter.websockets == "yes" %}
                "DJANGO_WEBSOCKET_ALLOWED_ORIGINS": "127.0.0.1",
{%- endif %}
                **environment,
            },
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # tests.processes
        )
    base = f"http://127.0.0.1:{port}"
    with killed_on_failure(server):
        # 30 s for the server to start, by the clock: a server that accepts and
        # never answers costs each try its 10 s timeout. The failure says what
        # each try got, refused or unanswered, and where each process was.
        deadline = time.monotonic() + 30
        tries = []
        while time.monotonic() < deadline and server.poll() is None:
            started = time.monotonic()
            try:
                status = call(f"{base}/healthz")[0]
            except OSError as error:
                status = repr(error)
            if status == 200:
                return server, base
            tries.append(f"{time.monotonic() - started:.2f} s: {status}")
            time.sleep(0.1)
        status = server.poll()
        if status is None:
            abort_with_stacks(server)
        pytest.fail(
            f"bin/serve did not answer within 30 s (exit status {status}); "
            f"the last tries: {tries[-5:]}\n{log.read_text()}"
        )


def stop(server: subprocess.Popen) -> None:
    # Uvicorn raises SIGTERM again once it has shut down: the exit status says
    # nothing here, the "stopped" log line of lifespan shutdown does.
    terminate(server, timeout=60)


def exporting_to(receiver: Receiver, **environment) -> dict:
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.server_port}",
        # Nothing is exported before shutdown: the spans the tests see arrive
        # only because lifespan shutdown flushes them.
        "OTEL_BSP_SCHEDULE_DELAY": "600000",
        **environment,
    }


def log_lines(log: Path) -> list[dict]:
    lines = log.read_text().splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


@pytest.mark.django_db(transaction=True)
def test_a_request_is_one_trace_with_its_queries_and_redis_commands(receiver, tmp_path):
    item = Item.objects.create(
        name="Widget-in-no-span",
        category=Category.objects.create(name="tools"),
        price="1.50",
    )
    log = tmp_path / "server.log"
    server, base = serve(
        exporting_to(receiver, OTEL_RESOURCE_ATTRIBUTES="deployment.environment=test"),
        log,
    )
    try:
        status, headers, body = exchange(
            f"{base}/api/items/{item.pk}", {"traceparent": TRACEPARENT}
        )
        assert (status, body["id"]) == (200, item.pk)
        missing_status, missing_headers, missing = exchange(
            f"{base}/api/items/{item.pk + 1000}"
        )
        # A write: Django's ORM in the request's thread, not core.reads.
        patched, _ = call(
            f"{base}/api/items/{item.pk}", method="PATCH", body={"quantity": 7}
        )
        assert patched == 200
    finally:
        stop(server)

    assert [line["message"] for line in log_lines(log)].count("stopped") == 1
    assert set(receiver.content_types) == {"application/x-protobuf"}
    assert {
        (r["service.name"], r["deployment.environment"]) for r, _ in receiver.spans
    } == {(settings.SERVICE_NAME, "test")}
    spans = [s for _, s in receiver.spans if s.trace_id.hex() == TRACE_ID]
    requests = [s for s in spans if s.kind == Span.SPAN_KIND_SERVER]
    assert [(s.name, s.parent_span_id.hex()) for s in requests] == [
        (f"GET {ROUTE}", PARENT_SPAN_ID)
    ]
    request = requests[0]
    # The answer names the request's span, sampled (W3C traceresponse), for
    # Nginx's access log.
    assert named(headers) == (TRACE_ID, request.span_id.hex(), True)
    children = [s for s in spans if s.parent_span_id == request.span_id]
    assert all(s.kind == Span.SPAN_KIND_CLIENT for s in children)
    systems = {
        a.value.string_value
        for s in children
        for a in s.attributes
        if a.key in ("db.system", "db.system.name")
    }
    # The item is read from the database (a miss) and then cached.
    expected = {connection.vendor}
    if settings.REDIS_URL:
        expected.add("redis")
    assert systems == expected
    assert len(children) == len(spans) - 1  # every span is the request's child

    # The write's statements are children of its request span too.
    [write] = [s for _, s in receiver.spans if s.name == f"PATCH {ROUTE}"]
    written = {
        a.value.string_value
        for _, s in receiver.spans
        if s.parent_span_id == write.span_id
        for a in s.attributes
        if a.key in ("db.system", "db.system.name")
    }
    assert written == expected

    # Statements and commands are recorded with placeholders: the item's values
    # (sent to the database, cached in Redis) reach no span.
    values = [str(a.value) for _, s in receiver.spans for a in s.attributes]
    assert [v for v in values if item.name in v] == []

    # The access log line of the request carries its trace and span.
    [access] = [
        line
        for line in log_lines(log)
        if line["logger"] == "core.access"
        and (line["method"], line["path"]) == ("GET", f"/api/items/{item.pk}")
    ]
    assert (access["trace_id"], access["span_id"]) == (
        TRACE_ID,
        request.span_id.hex(),
    )

    # An error answer names its trace beside the request id, as its log line does.
    assert missing_status == 404
    [missing_log] = [
        line
        for line in log_lines(log)
        if line["logger"] == "core.access" and line["status"] == 404
    ]
    assert missing["trace_id"] == missing_log["trace_id"] != TRACE_ID
    assert missing["request_id"] == missing_log["request_id"]
    assert len(missing["trace_id"]) == 32
    assert len(missing_log["span_id"]) == 16
    [missing_span] = [
        s
        for _, s in receiver.spans
        if s.trace_id.hex() == missing["trace_id"] and s.kind == Span.SPAN_KIND_SERVER
    ]
    assert (missing_span.name, missing_span.parent_span_id) == (f"GET {ROUTE}", b"")
    assert named(missing_headers) == (
        missing["trace_id"],
        missing_span.span_id.hex(),
        True,
    )


@pytest.mark.django_db(transaction=True)
def test_a_long_lived_connection_is_one_span(receiver, tmp_path):
    """One span from open to close, whatever was sent and received in between:
    an event stream{% if cookiecutter.websockets == "yes" %} and a WebSocket{% endif %}."""
    server, base = serve(
        exporting_to(receiver, SSE_KEEPALIVE_SECONDS="0.05"), tmp_path / "server.log"
    )
    try:
        with urllib.request.urlopen(f"{base}/api/items/events", timeout=10) as stream:  # noqa: S310
            keepalives = 0
            while keepalives < 3:
                keepalives += stream.readline() == b": keep-alive\n"
{%- if cookiecutter.websockets == "yes" %}
        with websocket_connect(
            base.replace("http", "ws") + "/ws/items", origin="http://127.0.0.1"
        ) as websocket:
            assert json.loads(websocket.recv(timeout=10))["type"] == "welcome"
            for _ in range(3):
                websocket.send(json.dumps({"type": "ping"}))
                assert json.loads(websocket.recv(timeout=10)) == {"type": "pong"}
{%- endif %}
    finally:
        stop(server)

    servers = [s for _, s in receiver.spans if s.kind == Span.SPAN_KIND_SERVER]
    # The server's log, for a failure: its export, its shutdown.
    assert sorted(s.name for s in servers) == [
        "GET api/items/events",
{%- if cookiecutter.websockets == "yes" %}
        "WEBSOCKET ws/items",
{%- endif %}
    ], (tmp_path / "server.log").read_text()
    # No span per message (the instrumentation's "send" and "receive" spans):
    # only the channel layer's Redis commands, on Redis, beside the connections.
    assert {s.kind for _, s in receiver.spans} <= {
        Span.SPAN_KIND_SERVER,
        Span.SPAN_KIND_CLIENT,
    }


OFF = """
import asyncio, json, sys, threading
from asgiref.testing import ApplicationCommunicator
from config.asgi import application
from core import tracing
from core.lifespan import _startup
{%- if cookiecutter.tasks != "none" %}
from core import tasks
{%- endif %}

# redis-py imports the OpenTelemetry API and metrics SDK when they are installed
# (its own optional metrics): what must not be there is anything of traces.
TRACING_MODULES = (
    "opentelemetry.instrumentation", "opentelemetry.exporter", "opentelemetry.sdk.trace"
)

async def main():
    await _startup()
    trace = sys.modules.get("opentelemetry.trace")
    path = "/api/no-such-thing"
    communicator = ApplicationCommunicator(application, {
        "type": "http", "http_version": "1.1", "method": "GET", "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": b"",
        "headers": [(b"host", b"localhost")],
    })
    await communicator.send_input({"type": "http.request", "body": b""})
    response = await communicator.receive_output(timeout=10)
    response["body"] = (await communicator.receive_output(timeout=10))["body"]
{%- if cookiecutter.tasks != "none" %}
    # A task's message and attempt, as a request enqueues it and a worker runs it.
    message = tasks.trace_kwargs()

    async def body():
        return "done"

    ran = await tasks.attempt(
        "t", body, (), number=1, attempts=1, time_limit=5, job=None, trace=None
    )
{%- endif %}
    print(json.dumps({
        "enabled": tracing.ENABLED,
        "status": response["status"],
        "body": json.loads(response["body"]),
        "loaded": sorted(m for m in sys.modules if m.startswith(TRACING_MODULES)),
        "provider": type(trace.get_tracer_provider()).__name__ if trace else None,
        "threads": sorted(t.name for t in threading.enumerate()),
{%- if cookiecutter.tasks != "none" %}
        "task": {"message": message, "result": ran.result},
{%- endif %}
    }))

asyncio.run(main())
"""


# In a process of its own: core.tracing reads the environment when imported.
OPEN_SPANS = """
import asyncio, json, django
django.setup()
from core import tracing

async def main():
    release = asyncio.Event()

    async def returns_when_released(scope, receive, send):
        await release.wait()

    async def never_returns(scope, receive, send):
        await asyncio.Event().wait()

    scope = {"type": "http", "method": "GET", "path": "/api/items", "headers": []}
    request = asyncio.ensure_future(
        tracing.Traced(returns_when_released)(scope, None, None)
    )
    await asyncio.sleep(0.05)
    waiting = asyncio.ensure_future(tracing.spans_ended(10))
    await asyncio.sleep(0.5)
    held = not waiting.done()
    release.set()
    await asyncio.wait_for(asyncio.gather(waiting, request), 5)
    asyncio.ensure_future(tracing.Traced(never_returns)(scope, None, None))
    await asyncio.sleep(0.05)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await tracing.spans_ended(0.3)
    print(json.dumps({"held": held, "bounded": loop.time() - started < 5}))

asyncio.run(main())
"""


def test_lifespan_shutdown_waits_for_the_spans_still_open_a_bounded_time():
    """Granian runs lifespan shutdown once its connections are closed, which can
    be before the app has returned for a client already gone: the export waits
    for such a request's span (core.tracing.spans_ended), and for one that never
    returns, a bounded time."""
    result = subprocess.run(  # noqa: S603  (this interpreter, our own script)
        [sys.executable, "-c", OPEN_SPANS],
        cwd=settings.BASE_DIR,
        env={
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            # On, with nothing exported: no TracerProvider is set up here.
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
        },
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert json.loads(result.stdout.splitlines()[-1]) == {"held": True, "bounded": True}


def test_without_an_endpoint_nothing_of_opentelemetry_is_loaded():
    """Off costs nothing: no SDK TracerProvider, no span processor or its
    thread, no exporter, no instrumentation, in a process that started up and
    served a request{% if cookiecutter.tasks != "none" %}, enqueued a task (its message carries nothing
    of traces) and ran one{% endif %}."""
    environment = {
        k: v for k, v in os.environ.items() if not k.startswith("OTEL_EXPORTER_OTLP")
    }
    result = subprocess.run(  # noqa: S603  (this interpreter, our own script)
        [sys.executable, "-c", OFF],
        cwd=settings.BASE_DIR,
        env={**environment, "DJANGO_SETTINGS_MODULE": "tests.settings"},
        capture_output=True,
        text=True,
        check=True,
    )
    answer = json.loads(result.stdout.splitlines()[-1])
    assert answer["enabled"] is False
    assert answer["status"] == 404
    assert "trace_id" not in answer["body"]
    assert answer["loaded"] == []
    assert answer["provider"] in (None, "ProxyTracerProvider")
    assert not [name for name in answer["threads"] if "Otel" in name]
{%- if cookiecutter.tasks != "none" %}
    assert answer["task"] == {"message": {}, "result": "done"}
{%- endif %}
    # Nor do log lines name a trace.
    assert "trace_id" not in result.stdout
