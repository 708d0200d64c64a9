"""Uvicorn's HTTP protocol (httptools) answering the requests it cannot parse
with this service's JSON error instead of plain text, bounding a request's
head, and holding less memory for each connection.

A request that never reaches the app (a malformed request line or header, an
unknown method, raw UTF-8 in the URL) gets its 400 from Uvicorn itself, whose
body is a hard-coded `Invalid HTTP request received.`: no setting of Uvicorn or
uvicorn-worker changes it, and no library does, so this subclass writes the
answer instead. Nginx answers such requests in front of the app; this one is for
whoever reaches the app's port directly. bin/serve (Uvicorn's --http) and
config/gunicorn_worker_class.py name it.

httptools reads a request's head (its request line and headers) whatever its
size: a client that reaches the app directly could make a worker hold
megabytes per connection (a 5 MB header was read whole). A head over
MAX_HEAD_BYTES (bin/serve) is answered 431 and the connection closed; the
bound is checked after each read, so a head is held to at most the limit and
one read more. Nginx in front passes at most 32 KiB (nginx.conf's
large_client_header_buffers); Granian has the same bound (--http1-buffer-size).

Each connection has two asyncio.Events (flow control, and the request's body)
and a deque for pipelined requests, which asyncio and collections allocate
whether or not they are used: 2.2 KiB of each idle event stream's 20
(tracemalloc, tests/bench of the platform template). The events are
core.inbox's Event, and the pipeline a list until a client pipelines.
"""

import json
import os

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from core.inbox import Event

# bin/serve sets it; the same default for a server started otherwise.
MAX_HEAD_BYTES = int(os.environ.get("MAX_HEAD_BYTES", "65536"))
INVALID = json.dumps({"error": "bad_request", "message": "invalid HTTP request"})
HEAD_TOO_LARGE = json.dumps(
    {
        "error": "headers_too_large",
        "message": f"the request line and headers exceed {MAX_HEAD_BYTES} bytes",
    }
)


class _Pipeline(list):
    """The deque of pipelined requests, as Uvicorn uses it (appendleft, pop,
    truth), without a deque's 0.7 KiB block for connections that never
    pipeline (browsers and proxies do not)."""

    def appendleft(self, item) -> None:
        self.insert(0, item)


class ServiceHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.pipeline = _Pipeline()
        # Bytes read since the current request's head began; None while its body is.
        self.head_bytes: int | None = 0

    def data_received(self, data: bytes) -> None:
        if self.head_bytes is not None:
            self.head_bytes += len(data)
        super().data_received(data)
        if (
            self.head_bytes is not None
            and self.head_bytes > MAX_HEAD_BYTES
            and not self.transport.is_closing()
        ):
            self.logger.warning("Request head over MAX_HEAD_BYTES received.")
            self.send_json_error(431, HEAD_TOO_LARGE)

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.flow._is_writable_event = Event()
        self.flow._is_writable_event.set()

    def on_headers_complete(self) -> None:
        self.head_bytes = None
        cycle = self.cycle
        super().on_headers_complete()
        # A new request's cycle, made just now: its app has not run yet.
        if self.cycle is not cycle:
            self.cycle.message_event = Event()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        # What the same read holds of a pipelined request's head goes uncounted:
        # at most one read more.
        self.head_bytes = 0

    # Called by HttpToolsProtocol.data_received once the parser has failed and
    # Uvicorn has logged its warning (uvicorn.error, a JSON line like any other).
    def send_400_response(self, msg: str) -> None:
        self.send_json_error(400, INVALID)

    def send_json_error(self, status: int, body: str) -> None:
        """Answers with the service's JSON error and closes the connection."""
        content = body.encode()
        headers = [
            *self.server_state.default_headers,
            (b"content-type", b"application/json"),
            (b"content-length", str(len(content)).encode()),
            (b"connection", b"close"),
        ]
        self.transport.write(
            STATUS_LINE[status]
            + b"".join(name + b": " + value + b"\r\n" for name, value in headers)
            + b"\r\n"
            + content
        )
        self.transport.close()
