"""The end-to-end proof of the metrics: each server with several workers behind
Nginx and its exporter, scraped by a real Prometheus with the service's own
configuration and rules, after a known amount of traffic.

Counters must equal exactly the requests sent, added up across workers; gauges
must rise while clients are connected and fall back to zero; every dashboard
panel's query must return data, and every rule must evaluate.
"""

import http.client
import json
import os
import signal
import sqlite3
import time
import urllib.request
from collections import Counter
from contextlib import ExitStack, closing
from pathlib import Path

import pytest
from websockets.sync.client import connect

import dashboards
from edge import ORIGIN, SERVER_TOKEN, App, Nginx, request
from matrix import each_server, params
from monitoring import SERVICE, Prometheus, failing, observe

SERVERS = params(each_server())
WORKERS = 2
ITEM_ROUTE = "api/items/<item_id:item_id>"
EVENTS_ROUTE = "api/items/events"
# Routes the test's own waiting and Prometheus's scrapes hit as well.
PROBE_ROUTES = "healthz|readyz|metrics"
TRAFFIC = f'service="{SERVICE}",route!~"{PROBE_ROUTES}"'
WEBSOCKETS, STREAMS = 3, 2
# Requests per token (API_RATE_LIMIT_REQUESTS): drive_requests sends one more
# with a token of its own.
RATE_LIMIT = 40
RATE_INTERVAL = "1m"


class Traffic:
    """Sends requests through Nginx and keeps count of what the app answered."""

    def __init__(self, nginx: Nginx):
        self.nginx = nginx
        self.sent = Counter()

    def send(
        self, method: str, path: str, route: str, body=None, token=SERVER_TOKEN
    ) -> tuple[int, dict]:
        response, content = request(self.nginx, method, path, body, token=token)
        self.sent[route, method, str(response.status)] += 1
        return response.status, json.loads(content) if content else {}


def drive_requests(traffic: Traffic, database) -> None:
    """2xx, 4xx and 5xx: reads, writes, misses, conflicts and database failures."""
    item = {"name": "widget", "category": "tools", "price": "2.50", "tags": ["a"]}
    ids = []
    for number in range(4):
        status, created = traffic.send(
            "POST", "/api/items", "api/items", {**item, "name": f"w{number}"}
        )
        assert status == 201, created
        ids.append(created["id"])
    for item_id in ids:  # a cache miss, then a hit
        for _ in range(2):
            assert traffic.send("GET", f"/api/items/{item_id}", ITEM_ROUTE)[0] == 200
    for missing in (999_001, 999_002, 999_003):
        assert traffic.send("GET", f"/api/items/{missing}", ITEM_ROUTE)[0] == 404
    assert traffic.send("GET", "/api/items?limit=2", "api/items")[0] == 200
    assert traffic.send("POST", "/api/items", "api/items", {"name": ""})[0] == 422
    for _ in range(2):  # a unique name taken: IntegrityError, answered 409
        traffic.send("POST", "/api/categories", "api/categories", {"name": "dup"})
    assert traffic.sent["api/categories", "POST", "409"] == 1
    with closing(sqlite3.connect(database, isolation_level=None)) as writer:
        # Another writer holds SQLite's write lock past the app's busy timeout:
        # the app answers 503 with Retry-After, no exception.
        writer.execute("BEGIN IMMEDIATE")
        for number in range(2):
            status, _ = traffic.send(
                "POST", "/api/items", "api/items", {**item, "name": f"y{number}"}
            )
            assert status == 503
        writer.execute("ROLLBACK")
        # A table the code needs is gone (a schema the release does not expect):
        # the app's writes fail with OperationalError, an unhandled 500.
        writer.execute("ALTER TABLE items_item RENAME TO items_item_away")
        for number in range(3):
            status, _ = traffic.send(
                "POST", "/api/items", "api/items", {**item, "name": f"x{number}"}
            )
            assert status == 500
        writer.execute("ALTER TABLE items_item_away RENAME TO items_item")
    # A second caller, whose token goes over its rate limit: one 429.
    [app] = traffic.nginx.upstreams
    limited = app.manage("issue_api_key", "limited").strip()
    statuses = [
        traffic.send("GET", "/api/items?limit=1", "api/items", token=limited)[0]
        for _ in range(RATE_LIMIT + 1)
    ]
    assert statuses == [200] * RATE_LIMIT + [429]


def open_event_stream(traffic: Traffic, clients: ExitStack) -> http.client.HTTPResponse:
    """An open event stream, closed with clients."""
    connection = http.client.HTTPConnection("127.0.0.1", traffic.nginx.port, timeout=10)
    clients.enter_context(closing(connection))
    connection.request("GET", "/api/items/events")
    stream = connection.getresponse()
    assert stream.status == 200
    assert b"retry:" in stream.read1()
    traffic.sent[EVENTS_ROUTE, "GET", "200"] += 1
    return stream


def drive_connections(traffic: Traffic, prometheus: Prometheus) -> dict:
    """Holds WebSockets and event streams open, has a broadcast reach all of them,
    and returns what Prometheus saw while they were open and after they closed."""
    url = f"ws://127.0.0.1:{traffic.nginx.port}/ws/items"
    seen = {}
    with ExitStack() as clients:
        sockets = [
            clients.enter_context(
                connect(url, additional_headers=ORIGIN, open_timeout=10)
            )
            for _ in range(WEBSOCKETS)
        ]
        streams = [open_event_stream(traffic, clients) for _ in range(STREAMS)]
        for websocket in sockets:
            assert json.loads(websocket.recv(timeout=10))["type"] == "welcome"
            websocket.send(json.dumps({"type": "ping"}))
            assert json.loads(websocket.recv(timeout=10)) == {"type": "pong"}
        for kind, count in (("websocket", WEBSOCKETS), ("sse", STREAMS)):
            seen[kind, "open"] = prometheus.wait_for(
                f'sum(django_connections_active{{service="{SERVICE}",type="{kind}"}})',
                count,
            )
        item = {"name": "broadcast", "category": "tools", "price": "1"}
        assert traffic.send("POST", "/api/items", "api/items", item)[0] == 201
        for websocket in sockets:
            assert json.loads(websocket.recv(timeout=10))["event"] == "item.created"
        for stream in streams:
            received = b""
            while b"event: item.created" not in received:
                received += stream.read1()
    for kind in ("websocket", "sse"):
        seen[kind, "closed"] = prometheus.wait_for(
            f'sum(django_connections_active{{service="{SERVICE}",type="{kind}"}})', 0
        )
    return seen


def worker_pids(app: App, metrics_dir: Path) -> set[int]:
    """The server's live workers: the processes that write metrics files."""
    pids = set()
    for path in metrics_dir.glob("gauge_livesum_*.db"):
        pid = int(path.stem.rsplit("_", 1)[1])
        stat = Path(f"/proc/{pid}/stat")
        # The parent pid is the field after the parenthesised command name.
        if stat.exists() and int(stat.read_text().rsplit(")", 1)[1].split()[1]) == (
            app.process.pid
        ):
            pids.add(pid)
    return pids


def crash_a_worker(app: App, metrics_dir: Path, prometheus: Prometheus) -> dict:
    """Kills one worker as a crash does (SIGKILL: no shutdown code runs), waits for
    the server to start another, and returns what Prometheus saw meanwhile."""
    pids = worker_pids(app, metrics_dir)
    assert len(pids) == WORKERS, pids
    total = f"sum(django_http_requests_total{{{TRAFFIC}}})"
    before = prometheus.value(total)
    started = time.time()
    os.kill(min(pids), signal.SIGKILL)
    deadline = time.monotonic() + 60
    while not worker_pids(app, metrics_dir) - pids:
        assert time.monotonic() < deadline, "the server started no new worker"
        time.sleep(0.5)
    # The first scrape that counts the new worker's start is also the first that
    # finds the old one dead: from then on the old one's gauges must be gone.
    starts = prometheus.wait_for(
        f'sum(django_worker_starts_total{{service="{SERVICE}"}})', WORKERS + 1
    )
    return {
        "starts": starts,
        "workers": prometheus.value(f'sum(django_workers{{service="{SERVICE}"}})'),
        "total before": before,
        "total after": prometheus.value(total),
        # Every scrape since the kill: a dead worker's counts must never drop out.
        "totals since": prometheus.range_values(total, started),
    }


# Module scope: a stack stops once its tests have run, instead of serving and
# scraping until the session ends (eleven at once slowed the whole suite).
@pytest.fixture(scope="module")
def observed(generated, redis_database, tmp_path_factory):
    """Per server: the stack, the traffic sent to it, and what Prometheus saw."""
    runs = {}
    with ExitStack() as cleanup:

        def run(combination: dict) -> dict:
            server = combination["server"]
            if server in runs:
                return runs[server]
            project = generated(combination)
            workdir = tmp_path_factory.mktemp(f"observability-{server}")
            stack = observe(
                cleanup,
                combination,
                project,
                workdir,
                WEB_CONCURRENCY=str(WORKERS),
                REDIS_URL=redis_database(),
                DATABASE_BUSY_TIMEOUT="0.3",
                # Above what the stack's own key sends, in one window for the run.
                API_RATE_LIMIT_REQUESTS=str(RATE_LIMIT),
                API_RATE_LIMIT_SECONDS="3600",
                GRANIAN_METRICS_SCRAPE_INTERVAL="1",
            )
            traffic = Traffic(stack.nginx)
            with stack.app.stacks_on_failure():
                drive_requests(traffic, workdir / "db.sqlite3")
                connections = drive_connections(traffic, stack.prometheus)
                crash = crash_a_worker(stack.app, stack.metrics_dir, stack.prometheus)
            runs[server] = {
                "project": project,
                "app": stack.app,
                "prometheus": stack.prometheus,
                "sent": traffic.sent,
                "connections": connections,
                "crash": crash,
            }
            return runs[server]

        yield run


def counted_requests(prometheus: Prometheus) -> Counter:
    result = prometheus.query(
        f"sum by (route, method, status) (django_http_requests_total{{{TRAFFIC}}})"
    )
    return Counter(
        {
            (s["metric"]["route"], s["metric"]["method"], s["metric"]["status"]): int(
                float(s["value"][1])
            )
            for s in result
        }
    )


@pytest.mark.parametrize("combination", SERVERS)
def test_request_counters_equal_the_requests_sent(combination, observed):
    run = observed(combination)
    prometheus, sent = run["prometheus"], run["sent"]
    assert {status[0] for (_, _, status) in sent} >= {"2", "4", "5"}
    total = f"sum(django_http_requests_total{{{TRAFFIC}}})"
    prometheus.wait_for(total, sum(sent.values()))
    assert counted_requests(prometheus) == sent
    workers = f'sum(django_workers{{service="{SERVICE}"}})'
    assert prometheus.value(workers) == WORKERS
    exceptions = (
        f'sum(django_http_exceptions_total{{service="{SERVICE}",'
        'type="OperationalError"})'
    )
    assert prometheus.value(exceptions) == sent["api/items", "POST", "500"]


@pytest.mark.parametrize("combination", SERVERS)
def test_connection_gauges_rise_while_connected_and_return_to_zero(
    combination, observed
):
    assert observed(combination)["connections"] == {
        ("websocket", "open"): WEBSOCKETS,
        ("sse", "open"): STREAMS,
        ("websocket", "closed"): 0,
        ("sse", "closed"): 0,
    }


@pytest.mark.parametrize("combination", SERVERS)
def test_every_dashboard_panel_returns_data(combination, observed):
    run = observed(combination)
    files = sorted(
        (run["project"] / "deploy" / "grafana" / "dashboards").glob("*.json")
    )
    # The fleet dashboard shows this one service too (test_fleet_dashboard: several).
    assert [f.stem for f in files] == (
        ["fleet", "granian", "service"]
        if combination["server"] == "granian"
        else ["fleet", "service"]
    )
    missing = dashboards.panels_without_data(
        run["prometheus"], files, service=SERVICE, rate_interval=RATE_INTERVAL
    )
    assert not missing, f"panels without data:\n{missing}"


@pytest.mark.parametrize("combination", SERVERS)
def test_every_rule_evaluates_without_error(combination, observed):
    rules = observed(combination)["prometheus"].evaluated_rules()
    assert rules
    assert not failing(rules), failing(rules)


@pytest.mark.parametrize("combination", SERVERS)
def test_a_crashed_worker_neither_lingers_nor_takes_its_counts_along(
    combination, observed
):
    run = observed(combination)
    crash, sent = run["crash"], sum(run["sent"].values())
    assert crash["workers"] == WORKERS  # the dead one's gauge is gone, not added
    assert crash["starts"] == WORKERS + 1
    assert crash["total before"] == crash["total after"] == sent
    assert crash["totals since"], "no scrape after the crash"
    assert set(crash["totals since"]) == {sent}


@pytest.mark.parametrize(
    "combination", params([c for c in each_server() if c["server"] == "granian"])
)
def test_prometheus_keeps_every_sample_of_granians_exporter(combination, observed):
    """Granian's exporter (2.8) ends its text without a newline, and lists families
    it has no sample of: `promtool check metrics` refuses that ("unexpected end of
    input stream"), Prometheus's scrape parser does not. Nothing to work around:
    every sample it serves is stored, and the target is up."""
    run = observed(combination)
    port = run["app"].granian_metrics_port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as response:
        text = response.read().decode()
    # When Granian adds the newline, this docstring and the README's note go.
    assert not text.endswith("\n")
    samples = [line.split()[0] for line in text.splitlines() if line[:1] not in "#"]
    assert samples, text
    prometheus, job = run["prometheus"], f'job="{SERVICE}-granian"'
    for series in samples:
        name, _, labels = series.partition("{")
        matchers = ",".join(filter(None, [labels.rstrip("}"), job]))
        assert prometheus.query(f"{name}{{{matchers}}}"), series
    assert prometheus.value(f"up{{{job}}}") == 1
