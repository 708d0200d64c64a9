"""Errors to Sentry (core.errors): a process with SENTRY_DSN set sends its
unhandled errors, as Sentry's own transport sends them, to a receiver of the
tests' own on 127.0.0.1, which reads them with sentry-sdk's envelope parser; and
with no DSN, nothing of sentry-sdk loads."""

import gzip
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.conf import settings
from sentry_sdk.envelope import Envelope

# A W3C traceparent as Nginx or a calling service would send it.
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
TOKEN = "sk_not-a-real-key-but-secret"


class SentryReceiver(ThreadingHTTPServer):
    """What Sentry's ingestion does with POST /api/<project>/envelope/: keeps the
    raw bodies and the events in them."""

    def __init__(self):
        self.bodies: list[bytes] = []
        self.events: list[dict] = []
        super().__init__(("127.0.0.1", 0), SentryHandler)

    @property
    def dsn(self) -> str:
        return f"http://public-key@127.0.0.1:{self.server_address[1]}/42"


class SentryHandler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        assert self.path == "/api/42/envelope/", self.path
        self.server.bodies.append(body)
        event = Envelope.deserialize(body).get_event()
        if event is not None:
            self.server.events.append(event)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format, *args):  # the test's output stays clean
        pass


@pytest.fixture
def sentry():
    server = SentryReceiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


# A server worker process, in one process: lifespan startup, then requests
# through the service's ASGI application and middleware, to the URLconf of
# tests.test_logging (the service's, and a view that raises).
REQUESTS = """
import asyncio, json, sys

import django
django.setup()
from django.conf import settings
settings.ROOT_URLCONF = "tests.test_logging"

import sentry_sdk
from asgiref.testing import ApplicationCommunicator
from config.asgi import application
from core.lifespan import _startup


async def get(path, headers):
    communicator = ApplicationCommunicator(application, {
        "type": "http", "http_version": "1.1", "method": "GET", "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": b"",
        "headers": [(b"host", b"localhost"), *headers],
    })
    await communicator.send_input({"type": "http.request", "body": b""})
    start = await communicator.receive_output(timeout=10)
    await communicator.receive_output(timeout=10)
    return start["status"]


async def main():
    await _startup()
    statuses = [
        await get("/healthz", []),
        await get("/broken", [
            (b"x-request-id", b"req-sentry"),
            (b"traceparent", sys.argv[1].encode()),
            (b"authorization", b"Bearer " + sys.argv[2].encode()),
        ]),
    ]
    sentry_sdk.flush(timeout=10)
    print(json.dumps(statuses))

asyncio.run(main())
"""


def run(script: str, *args: str, **environment: str) -> subprocess.CompletedProcess:
    """Runs the script in a process of its own; a failure shows its output."""
    result = subprocess.run(  # noqa: S603  (this interpreter, our own script)
        [sys.executable, "-c", script, *args],
        cwd=settings.BASE_DIR,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("SENTRY_")},
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            **environment,
        },
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_an_unhandled_error_is_one_event_with_its_request_and_trace(sentry, receiver):
    result = run(
        REQUESTS,
        TRACEPARENT,
        TOKEN,
        SENTRY_DSN=sentry.dsn,
        SENTRY_ENVIRONMENT="staging",
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{receiver.server_port}",
    )
    assert json.loads(result.stdout.splitlines()[-1]) == [200, 500]
    # One event: the error's, not also its access line's; none for the probe.
    (event,) = sentry.events
    (exception,) = event["exception"]["values"]
    assert (exception["type"], exception["value"]) == ("RuntimeError", "boom")
    assert event["logger"] == "django.request"
    assert event["level"] == "error"
    assert event["tags"]["request_id"] == "req-sentry"
    assert event["tags"]["trace_id"] == TRACE_ID
    assert event["environment"] == "staging"
    assert event["release"] == f"{settings.SERVICE_NAME}@{settings.SERVICE_VERSION}"
    # What stays home: frames' local variables, the caller's credentials.
    frames = exception["stacktrace"]["frames"]
    assert frames
    assert not [frame for frame in frames if "vars" in frame]
    assert not [body for body in sentry.bodies if TOKEN.encode() in body]


NOTHING = """
import json, sys
import django
django.setup()
import config.asgi
print(json.dumps(sorted(m for m in sys.modules if m.startswith("sentry_sdk"))))
"""


def test_without_a_dsn_nothing_of_sentry_is_loaded():
    result = run(NOTHING)
    assert json.loads(result.stdout.splitlines()[-1]) == []
