"""Nginx in front of each server, proven with real traffic on 127.0.0.1."""

import http.client
import json
import secrets
import socket
import threading
import time
import uuid
from contextlib import ExitStack
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import jinja2
import pytest
from websockets.sync.client import connect

from edge import (
    ORIGIN,
    App,
    Nginx,
    bearer,
    request,
    serve,
    trusted_proxies_conf,
    without_comments,
)
from matrix import TEMPLATE_DIR, each_server, params

# Larger than what Nginx's memory buffers and the sockets' buffers hold together.
LARGE_RESPONSE = 32 * 1024 * 1024
# Shorter than Nginx's default proxy_read_timeout (60 s) so that the idle test
# shows the pings, not luck, keep a WebSocket open.
PING_INTERVAL = "5"


SERVERS = params(each_server())


class Collector(ThreadingHTTPServer):
    """Stands for an OpenTelemetry collector: keeps the bodies of the OTLP/HTTP
    exports it is sent (protobuf, in which a trace id is its 16 raw bytes)."""

    def __init__(self):
        self.exports: list[bytes] = []
        super().__init__(("127.0.0.1", 0), CollectorHandler)

    def received(self, trace_id: str) -> bool:
        """Whether a span of this trace has arrived, waited for 10 s at most."""
        for _ in range(100):
            if any(bytes.fromhex(trace_id) in body for body in list(self.exports)):
                return True
            time.sleep(0.1)
        return False


class CollectorHandler(BaseHTTPRequestHandler):
    def do_POST(self):
        self.server.exports.append(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def collector():
    server = Collector()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


# Module scope: a stack stops once its tests have run, instead of serving and
# scraping until the session ends (eleven at once slowed the whole suite).
@pytest.fixture(scope="module")
def stacks(generated, redis_database, tmp_path_factory, collector):
    """One running app (two workers) behind one Nginx per combination, sending
    its traces to a collector, as a production deployment does."""
    running = {}
    with ExitStack() as cleanup:

        def start(combination: dict) -> tuple[App, Nginx]:
            key = combination["server"]
            if key not in running:
                project = generated(combination)
                workdir = tmp_path_factory.mktemp(f"edge-{key}")
                running[key] = serve(
                    cleanup,
                    project,
                    workdir,
                    WEB_CONCURRENCY="2",
                    REDIS_URL=redis_database(),
                    WEBSOCKET_PING_INTERVAL=PING_INTERVAL,
                    # Strict-Transport-Security only on requests the app takes
                    # for https (request.is_secure()): what the trust tests see.
                    DJANGO_SECURE_HSTS_SECONDS="60",
                    OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{collector.server_port}",
                    OTEL_BSP_SCHEDULE_DELAY="100",
                )
            return running[key]

        yield start


def raw(nginx: Nginx, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", nginx.port), timeout=10) as sock:
        sock.sendall(data)
        return sock.recv(65536)


def app_log_lines(app: App) -> list[dict]:
    return [
        json.loads(line) for line in app.output().splitlines() if line.startswith("{")
    ]


@pytest.mark.parametrize("combination", SERVERS)
def test_api_round_trip_with_security_headers(combination, stacks):
    _, nginx = stacks(combination)
    response, content = request(
        nginx, "POST", "/api/items", {"name": "edge", "category": "c", "price": "1"}
    )
    assert response.status == 201, content
    item = json.loads(content)
    response, content = request(nginx, "GET", f"/api/items/{item['id']}")
    assert (response.status, json.loads(content)) == (200, item)
    for header, value in [
        ("X-Content-Type-Options", "nosniff"),
        ("X-Frame-Options", "DENY"),
        ("Referrer-Policy", "same-origin"),
        ("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'"),
    ]:
        assert response.headers.get_all(header) == [value], header
    assert len(response.headers.get_all("X-Request-ID")) == 1


@pytest.mark.parametrize("combination", SERVERS)
def test_writes_through_nginx_need_the_apps_token(combination, stacks):
    """Nginx passes Authorization on to the app, and logs no part of it: a write
    without a token is the app's JSON 401 with its challenge, and writes nothing;
    a token that is not valid is refused even on a read; the app's key writes."""
    app, nginx = stacks(combination)
    category = f"auth-{uuid.uuid4().hex}"
    listed = f"/api/items?category={category}"
    item = {"name": "edge", "category": category, "price": "1"}

    response, content = request(nginx, "POST", "/api/items", item, token=None)
    assert response.status == 401, content
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="api"'
    assert json.loads(content)["error"] == "unauthorized"
    # Reads stay public: the list, read without a token, has no such item.
    response, content = request(nginx, "GET", listed, token=None)
    assert response.status == 200, content
    assert json.loads(content)["items"] == []

    # Shaped as the service's keys are, but never issued.
    forged = f"sk_{'0' * 12}_{'x' * 43}"
    response, content = request(nginx, "GET", listed, token=forged)
    assert response.status == 401, content
    assert response.headers["WWW-Authenticate"].startswith(
        'Bearer realm="api", error="invalid_token"'
    )

    given = f"auth-{uuid.uuid4()}"
    response, content = request(
        nginx, "POST", "/api/items", item, headers={"X-Request-ID": given}
    )
    assert response.status == 201, content
    response, content = request(nginx, "GET", listed, token=None)
    assert [i["name"] for i in json.loads(content)["items"]] == ["edge"]
    # The key reached the app through Nginx, and neither logged it.
    assert nginx_access_lines(nginx, given)
    assert app.token not in nginx.output()
    assert app.token not in app.output()


def requests_seen(app: App) -> list[dict]:
    """The app's access-log lines: one per request it served. Not every line of
    its log: a worker process that starts late still logs its startup."""
    return [line for line in app_log_lines(app) if line.get("logger") == "core.access"]


@pytest.mark.parametrize("combination", SERVERS)
@pytest.mark.parametrize(
    "bad",
    [b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n"],
    ids=["request-line", "header"],
)
def test_malformed_requests_get_400_from_nginx(combination, stacks, bad):
    app, nginx = stacks(combination)
    before = len(requests_seen(app))
    assert raw(nginx, bad).startswith(b"HTTP/1.1 400")
    assert len(requests_seen(app)) == before


# Sent straight to the app's port, as a pod's neighbours can: requests that the
# server's HTTP parser refuses (Uvicorn's httptools all four, Granian's hyper the
# last two) and that Nginx would have answered itself.
STRAIGHT_TO_THE_APP = {
    "unknown-method": b"FOO /api/items HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    "utf8-query": b"GET /api/items?q=\xc3\xa9 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    "request-line": b"GARBAGE\r\n\r\n",
    "header": b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nno colon here\r\n\r\n",
}


def raw_response(app: App, data: bytes) -> tuple[http.client.HTTPResponse, bytes]:
    with socket.create_connection(("127.0.0.1", app.port), timeout=10) as sock:
        sock.sendall(data)
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response, response.read()


def log_end(app: App) -> int:
    """Where the app's next complete log line will start."""
    return app.output().rfind("\n") + 1


def log_lines_since(app: App, start: int) -> list[dict]:
    """The complete lines the app has logged since start, each one JSON object."""
    return [
        json.loads(line)
        for line in app.output()[start:].splitlines(True)
        if line.endswith("\n")
    ]


@pytest.mark.parametrize(
    "combination",
    params([c for c in each_server() if c["server"] != "granian"]),
)
@pytest.mark.parametrize(
    "bad", STRAIGHT_TO_THE_APP.values(), ids=STRAIGHT_TO_THE_APP.keys()
)
def test_uvicorn_answers_what_it_cannot_parse_in_json(combination, stacks, bad):
    """Uvicorn's own 400 is the service's JSON error (config/uvicorn_http.py), and
    its warning a JSON line of the app's log, under Gunicorn too."""
    app, _ = stacks(combination)
    start = log_end(app)
    response, content = raw_response(app, bad)
    assert response.status == 400
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["Connection"] == "close"
    assert json.loads(content) == {
        "error": "bad_request",
        "message": "invalid HTTP request",
    }
    # Uvicorn logs its warning before it answers; every line since is JSON.
    lines = log_lines_since(app, start)
    assert {"logger": "uvicorn.error", "message": "Invalid HTTP request received."} in [
        {"logger": line["logger"], "message": line["message"]} for line in lines
    ]


def read_responses(sock: socket.socket) -> list[tuple[int, bytes]]:
    """Each (status, body) the server sends until it closes: answers with a
    Content-Length, as the service's JSON ones are."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    responses = []
    while data:
        head, _, data = data.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in header_lines)
        length = int(headers["content-length"])
        responses.append((int(status_line.split()[1]), data[:length]))
        data = data[length:]
    return responses


@pytest.mark.parametrize("combination", SERVERS)
def test_pipelined_requests_are_answered_in_order(combination, stacks):
    """Three requests in one write, straight to the app (Uvicorn's pipeline is
    config/uvicorn_http.py's): each answered, in the order sent."""
    app, _ = stacks(combination)
    with socket.create_connection(("127.0.0.1", app.port), timeout=10) as sock:
        sock.sendall(
            b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            b"GET /api/items?limit=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            b"GET /api/nowhere HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Connection: close\r\n\r\n"
        )
        (first, healthz), (second, items), (third, _) = read_responses(sock)
    assert (first, json.loads(healthz)) == (200, {"status": "ok"})
    assert (second, type(json.loads(items)["items"])) == (200, list)
    assert third == 404


def head_of(size: int) -> bytes:
    """A GET to /healthz whose request line and headers are `size` bytes, but
    for the blank line that ends them."""
    start = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: "
    return start + b"a" * (size - len(start) - 2) + b"\r\n"


@pytest.mark.parametrize("combination", SERVERS)
def test_a_request_head_over_max_head_bytes_is_refused_with_431(combination, stacks):
    """Straight to the app, a head a little over MAX_HEAD_BYTES (bin/serve's
    64 KiB) is answered 431, as one of 40 KiB, more than Nginx passes, is not:
    a worker never reads an unbounded head."""
    app, _ = stacks(combination)
    response, _ = raw_response(app, head_of(40 * 1024) + b"\r\n")
    assert response.status == 200
    with socket.create_connection(("127.0.0.1", app.port), timeout=10) as sock:
        # Read by the server before the rest comes: the rest, which takes it
        # over, is then all read, and its close resets nothing unread.
        head = head_of(65 * 1024)
        sock.sendall(head[: 63 * 1024])
        time.sleep(0.5)
        sock.sendall(head[63 * 1024 :])
        response = http.client.HTTPResponse(sock)
        response.begin()
        content = response.read()
    assert response.status == 431
    if combination["server"] != "granian":
        # Granian's own answer has no body (the service's README).
        assert json.loads(content)["error"] == "headers_too_large"


@pytest.mark.parametrize(
    "combination",
    params([c for c in each_server() if c["server"] == "granian"]),
)
def test_granian_answers_what_it_cannot_parse_with_an_empty_400(combination, stacks):
    """Granian's HTTP parser (hyper) answers a malformed request line or header
    itself with an empty 400, which no setting changes (the service's README),
    and logs nothing of it; an unknown method and raw UTF-8 in the query reach
    the app, whose errors are JSON."""
    app, _ = stacks(combination)
    start = log_end(app)
    for name in ("request-line", "header"):
        response, content = raw_response(app, STRAIGHT_TO_THE_APP[name])
        assert (response.status, content) == (400, b""), name
        assert sorted(response.headers) == ["connection", "content-length", "date"]
        assert response.headers["Connection"] == "close"
    for name, status, error in (
        ("unknown-method", 405, "method_not_allowed"),
        ("utf8-query", 400, "invalid_query"),
    ):
        response, content = raw_response(app, STRAIGHT_TO_THE_APP[name])
        assert response.status == status, name
        assert json.loads(content)["error"] == error
    # Every line since is JSON: the app's access lines of the last two, and
    # whatever Granian may have written of the first two.
    assert all("logger" in line for line in log_lines_since(app, start))


@pytest.mark.parametrize("combination", SERVERS)
def test_oversized_body_gets_413_from_nginx(combination, stacks):
    app, nginx = stacks(combination)
    before = len(requests_seen(app))
    response, content = request(nginx, "POST", "/api/items", b"x" * 70_000)
    assert response.status == 413
    assert json.loads(content)["error"] == "payload_too_large"
    assert len(requests_seen(app)) == before


@pytest.mark.parametrize("combination", SERVERS)
def test_invalid_json_gets_the_apps_400(combination, stacks):
    _, nginx = stacks(combination)
    response, content = request(nginx, "POST", "/api/items", b'{"name": ')
    assert response.status == 400
    assert json.loads(content)["error"] == "malformed_json"


@pytest.mark.parametrize("combination", SERVERS)
def test_request_ids_reach_the_app_log(combination, stacks):
    app, nginx = stacks(combination)
    given = f"edge-{uuid.uuid4()}"
    page = "/api/items?limit=1"
    response, _ = request(nginx, "GET", page, headers={"X-Request-ID": given})
    assert response.headers["X-Request-ID"] == given
    response, _ = request(nginx, "GET", page)
    generated_id = response.headers["X-Request-ID"]
    assert len(generated_id) == 32
    logged = {line.get("request_id") for line in app_log_lines(app)}
    assert {given, generated_id} <= logged


@pytest.mark.parametrize("combination", SERVERS)
def test_the_app_sees_the_real_client_address(combination, stacks):
    # The test deployment trusts 127.0.0.1 as a load balancer in front of Nginx,
    # and the app trusts Nginx: the address the balancer names reaches the app.
    app, nginx = stacks(combination)
    given = f"client-{uuid.uuid4()}"
    request(
        nginx,
        "GET",
        "/api/items?limit=1",
        headers={"X-Request-ID": given, "X-Forwarded-For": "203.0.113.9"},
    )
    (line,) = [line for line in app_log_lines(app) if line.get("request_id") == given]
    assert line["client"] == "203.0.113.9"


@pytest.mark.parametrize("combination", SERVERS)
def test_forwarded_headers_count_only_from_trusted_proxies(combination, stacks):
    """A client that reaches Nginx directly, not through a proxy of its
    trusted-proxies.conf, cannot make the app take its request for https, nor
    choose the address that Nginx's per-client limits and logs use."""
    app, trusting = stacks(combination)
    with ExitStack() as cleanup:
        # Trusts ::1 only: the list is not empty, yet 127.0.0.1 is not in it.
        untrusting = Nginx.in_front(app.cwd, [app], trusted_proxies=("::1",))
        cleanup.callback(untrusting.stop)
        untrusting.start()
        for nginx, trusted in ((trusting, True), (untrusting, False)):
            given = f"spoof-{uuid.uuid4()}"
            response, content = request(
                nginx,
                "GET",
                "/api/items?limit=1",
                headers={
                    "X-Request-ID": given,
                    "X-Forwarded-Proto": "https",
                    "X-Forwarded-For": "203.0.113.9",
                },
            )
            assert response.status == 200, content
            secure = "Strict-Transport-Security" in response.headers
            assert secure is trusted, response.headers
            client = "203.0.113.9" if trusted else "127.0.0.1"
            (logged,) = [
                line for line in app_log_lines(app) if line.get("request_id") == given
            ]
            assert logged["client"] == client
            (access,) = nginx_access_lines(nginx, given)
            assert access["client"] == client


def test_the_ansible_role_writes_trusted_proxies_as_the_test_above_does():
    """The test above runs Nginx on edge.trusted_proxies_conf(); the VMs run the
    edge role's template. (The chart's: test_helm.py.)"""
    template = TEMPLATE_DIR / "ansible/roles/edge/templates/trusted-proxies.conf.j2"
    proxies = ["10.0.0.0/8", "::1"]
    # Ansible's template module: Jinja2 with trim_blocks; an Nginx file, not HTML.
    environment = jinja2.Environment(  # noqa: S701
        trim_blocks=True, keep_trailing_newline=True, undefined=jinja2.StrictUndefined
    )
    rendered = environment.from_string(template.read_text()).render(
        edge_trusted_proxies=proxies, ansible_managed="Ansible managed"
    )
    assert without_comments(rendered) == trusted_proxies_conf(tuple(proxies))


@pytest.mark.parametrize("combination", SERVERS)
def test_nginx_logs_the_trace_of_each_request(combination, stacks, collector):
    """Nginx's access line of a request names its trace: the one the app
    continued from the caller's traceparent, or started itself, and the one Nginx
    passes through when it answers alone. The app's log lines of the request
    carry the same id, and its spans reach the collector."""
    app, nginx = stacks(combination)
    caller_trace = secrets.token_hex(16)
    traceparent = f"00-{caller_trace}-{secrets.token_hex(8)}-01"
    continued, started, refused = (f"trace-{uuid.uuid4()}" for _ in range(3))
    response, _ = request(
        nginx,
        "GET",
        "/api/items?limit=1",
        headers={"X-Request-ID": continued, "traceparent": traceparent},
    )
    assert response.status == 200
    assert response.headers["traceresponse"].split("-")[1] == caller_trace
    response, _ = request(
        nginx, "GET", "/api/items?limit=1", headers={"X-Request-ID": started}
    )
    assert response.status == 200
    app_trace = response.headers["traceresponse"].split("-")[1]
    assert app_trace not in (caller_trace, "0" * 32)
    response, _ = request(
        nginx,
        "POST",
        "/api/items",
        b"x" * 70_000,
        headers={"X-Request-ID": refused, "traceparent": traceparent},
    )
    assert response.status == 413
    for request_id, trace_id in (
        (continued, caller_trace),
        (started, app_trace),
        (refused, caller_trace),
    ):
        (access,) = nginx_access_lines(nginx, request_id)
        assert access["trace_id"] == trace_id, access
    for request_id, trace_id in ((continued, caller_trace), (started, app_trace)):
        lines = [
            line for line in app_log_lines(app) if line.get("request_id") == request_id
        ]
        assert lines
        assert {line.get("trace_id") for line in lines} == {trace_id}
        assert collector.received(trace_id), trace_id


def nginx_access_lines(nginx: Nginx, request_id: str) -> list[dict]:
    """Nginx's access-log lines of a request. Nginx writes the line after the
    response has gone out, so a client may read the response first: waited for,
    10 s at most."""
    for _ in range(100):
        lines = [
            json.loads(line)
            for line in nginx.output().splitlines()
            if request_id in line
        ]
        if lines:
            return lines
        time.sleep(0.1)
    return []


@pytest.mark.parametrize("combination", SERVERS)
@pytest.mark.parametrize(
    "path", ["/metrics", "/healthz", "/readyz", "/admin/", "/internal/x"]
)
def test_internal_paths_are_not_public(combination, stacks, path):
    _, nginx = stacks(combination)
    response, content = request(nginx, "GET", path)
    assert response.status == 404
    assert json.loads(content)["error"] == "not_found"


@pytest.mark.parametrize("combination", SERVERS)
def test_status_and_probes_only_on_the_internal_listener(combination, stacks):
    """The status listener (127.0.0.1) serves the exporter's stub_status and the
    app's probes through Nginx, which the host's own checks use."""
    _, nginx = stacks(combination)
    connection = http.client.HTTPConnection("127.0.0.1", nginx.status_port, timeout=10)
    connection.request("GET", "/stub_status")
    assert b"Active connections" in connection.getresponse().read()
    for path, status in (("/healthz", "ok"), ("/readyz", "ready")):
        connection.request("GET", path)
        response = connection.getresponse()
        assert response.status == 200, path
        assert json.loads(response.read())["status"] == status
    response, _ = request(nginx, "GET", "/stub_status")
    assert response.status == 404


@pytest.mark.parametrize("combination", SERVERS)
def test_static_files_are_served_by_nginx_with_cache_headers(combination, stacks):
    app, nginx = stacks(combination)
    (nginx.static_root / "static" / "site.css").write_text("body {}")
    response, content = request(nginx, "GET", "/static/site.css")
    assert (response.status, content) == (200, b"body {}")
    assert response.headers["Cache-Control"] == "max-age=2592000"
    assert "/static/site.css" not in app.output()


@pytest.mark.parametrize("combination", SERVERS)
def test_sse_events_arrive_one_at_a_time(combination, stacks):
    _, nginx = stacks(combination)
    connection = http.client.HTTPConnection("127.0.0.1", nginx.port, timeout=10)
    connection.request("GET", "/api/items/events")
    stream = connection.getresponse()
    assert stream.status == 200
    assert stream.headers["Content-Type"].startswith("text/event-stream")
    assert b"retry:" in stream.read1()
    for name in ("first", "second"):
        # The next item is created only once the previous event has been read.
        request(
            nginx, "POST", "/api/items", {"name": name, "category": "c", "price": "1"}
        )
        received = b""
        while b"event: item.created" not in received:
            received += stream.read1()
        assert f'"name":"{name}"'.encode() in received
    connection.close()


@pytest.mark.parametrize("combination", SERVERS)
def test_websocket_gets_broadcasts_after_idling_past_nginx_default_timeout(
    combination, stacks
):
    _, nginx = stacks(combination)
    url = f"ws://127.0.0.1:{nginx.port}/ws/items"
    with connect(url, additional_headers=ORIGIN, open_timeout=10) as websocket:
        assert json.loads(websocket.recv(timeout=10))["type"] == "welcome"
        time.sleep(65)
        request(
            nginx, "POST", "/api/items", {"name": "late", "category": "c", "price": "1"}
        )
        message = json.loads(websocket.recv(timeout=10))
        assert (message["event"], message["data"]["name"]) == ("item.created", "late")


def messages_until(websocket, wanted: list[dict], limit: int = 20) -> list[dict]:
    """What the WebSocket receives until it has had every message of `wanted`
    (other messages, a broadcast of another test's write, may come between)."""
    received = []
    while not all(message in received for message in wanted):
        assert len(received) < limit, received
        received.append(json.loads(websocket.recv(timeout=10)))
    return received


@pytest.mark.parametrize("combination", SERVERS)
def test_direct_messages_reach_connections_on_every_worker(combination, stacks):
    """Six connections over the server's two workers, each sends a direct
    message to the next: each gets the one sent to it, through Redis from
    whichever worker (under Uvicorn and Gunicorn each consumer's channel is
    delivered into the server's queue of its connection: core/dispatch.py)."""
    _, nginx = stacks(combination)
    url = f"ws://127.0.0.1:{nginx.port}/ws/items"
    headers = {**ORIGIN, **bearer(nginx.token)}
    with ExitStack() as stack:
        websockets = [
            stack.enter_context(connect(url, additional_headers=headers))
            for _ in range(6)
        ]
        welcomes = [json.loads(ws.recv(timeout=10)) for ws in websockets]
        names = [welcome["connection"] for welcome in welcomes]
        for number, websocket in enumerate(websockets):
            direct = {"type": "direct", "to": names[(number + 1) % 6]}
            websocket.send(json.dumps({**direct, "text": f"{number}"}))
        for number, websocket in enumerate(websockets):
            sender = (number - 1) % 6
            direct = {
                "type": "direct",
                "from": names[sender],
                "user": welcomes[sender]["user"],
                "text": f"{sender}",
            }
            sent = {"type": "sent", "to": names[(number + 1) % 6]}
            messages_until(websocket, [sent, direct])


@pytest.mark.parametrize("combination", SERVERS)
def test_slow_clients_do_not_stop_the_app_from_answering(combination, stacks):
    _, nginx = stacks(combination)
    slow = []
    try:
        # Half-open requests that never finish their headers: Nginx holds them.
        for _ in range(300):
            sock = socket.create_connection(("127.0.0.1", nginx.port), timeout=10)
            sock.sendall(b"GET /api/items HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            slow.append(sock)
        response, content = request(nginx, "GET", "/api/items?limit=1")
        assert response.status == 200, content
    finally:
        for sock in slow:
            sock.close()


class LargeResponses(BaseHTTPRequestHandler):
    """An upstream of the test's own: every answer to a GET is LARGE_RESPONSE
    bytes, and the server's `written` is set once one has been written whole; a
    POST is answered with the length of its body."""

    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(LARGE_RESPONSE))
        self.end_headers()
        chunk = b"x" * 65536
        for _ in range(LARGE_RESPONSE // len(chunk)):
            self.wfile.write(chunk)
        self.server.written.set()

    def do_POST(self):
        length = len(self.rfile.read(int(self.headers["Content-Length"])))
        body = str(length).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("combination", params(each_server()[:1]))
def test_a_slow_reader_does_not_fill_nginxs_temporary_files(combination, stacks):
    """Nginx keeps no temporary files (the pod's /tmp is small): a client that
    does not read holds the upstream, and Nginx logs no response "buffered to a
    temporary file"; nor a request body as large as it takes."""
    app, _ = stacks(combination)
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), LargeResponses)
    upstream.written = threading.Event()
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    address = f"127.0.0.1:{upstream.server_address[1]}"
    with ExitStack() as cleanup:
        cleanup.callback(upstream.shutdown)
        nginx = Nginx.in_front(app.cwd, [SimpleNamespace(upstream=address)])
        cleanup.callback(nginx.stop)
        nginx.start()
        connection = http.client.HTTPConnection("127.0.0.1", nginx.port, timeout=30)
        cleanup.callback(connection.close)
        connection.request("GET", "/large")
        # Not read until the upstream has written all, or long enough for Nginx
        # to have buffered the rest to a file if it would.
        upstream.written.wait(timeout=5)
        response = connection.getresponse()
        assert (response.status, len(response.read())) == (200, LARGE_RESPONSE)
        assert "buffered to a temporary file" not in nginx.output()
        # Nor of request bodies: the largest Nginx takes stays in memory.
        largest = b"x" * 64 * 1024  # client_max_body_size
        connection.request("POST", "/upload", body=largest)
        response = connection.getresponse()
        assert (response.status, response.read()) == (200, str(len(largest)).encode())
        assert "buffered to a temporary file" not in nginx.output()
