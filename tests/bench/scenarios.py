"""The scenarios, each over the configurations it compares. One cell starts its
servers, warms up, measures, stops them; a cell that fails is recorded as such
and the run goes on."""

import asyncio
import json
import operator
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from bench import load
from bench.deploy import (
    DATABASES,
    Upstream,
    asgi_server,
    cpu_seconds,
    nginx_alone,
    process_tree,
    project_name,
    resident_bytes,
    tree_cpu_seconds,
    wsgi_server,
)
from edge import Nginx, bearer

SERVERS = ("uvicorn", "granian", "gunicorn-uvicorn")
WSGI = ("wsgi-sync", "wsgi-gthread")
# The service before its native data path, generated from BEFORE_COMMIT.
BEFORE = "before-uvicorn"
ORIGIN = "http://127.0.0.1"
# What the API serves without a token; every other method shows the bench's key.
PUBLIC_METHODS = ("GET", "HEAD", "OPTIONS")


@dataclass
class Database:
    """A database of the run: its URL, the API key issued in it for the load
    generator (migrate_and_seed), and its server's process (deploy.listening_pid)."""

    url: str
    token: str
    server_pid: int


@dataclass
class Settings:
    seconds: float
    warmup: float
    websockets: int
    sse_clients: int


class Cells:
    """Starts configurations by name and records one row per measured cell."""

    def __init__(
        self,
        projects: dict,
        logdir: Path,
        env: dict,
        settings: Settings,
        upstream_pid: int,
        redis_url: str,
        databases: dict[str, Database],
    ):
        """`projects` by deploy.project_name(); `databases` by name (DATABASES),
        at least the first."""
        self.projects, self.logdir, self.env = projects, logdir, env
        # Their URLs, and the API keys the writes show, as the API asks (reads
        # are public, and go without it: they measure what an anonymous reader
        # costs).
        self.databases = databases
        self.settings, self.upstream_pid = settings, upstream_pid
        # Every HTTP cell runs as production does, with Redis: without it the
        # service's bin/serve starts one worker (events would not reach the
        # other), the WSGI baselines two. The SSE and WebSocket scenarios measure
        # one worker on the in-memory channel layer, without it. The services of
        # each database have a Redis database of their own (`redis_url` is the
        # server's, without one): no cached item, event or rate-limit count
        # crosses from one to the other.
        self.redis_url = redis_url
        self.rows: list[dict] = []

    def server(self, config: str, database: str = DATABASES[0], **env):
        """`config` on the service generated for `database`, with its URL."""
        env = {**self.env, "DATABASE_URL": self.databases[database].url, **env}
        if config in ("wsgi-sync", "wsgi-gthread"):
            worker = config.removeprefix("wsgi-")
            project = self.projects[project_name("gunicorn-uvicorn", database)]
            return project, wsgi_server(config, project, self.logdir, env, worker)
        kind, server = config.split("-", 1)
        if server.endswith("-no-metrics"):
            server = server.removesuffix("-no-metrics")
            env["BENCH_METRICS"] = "0"
        if kind == "stock":
            env.update(BENCH_STOCK="1", BENCH_METRICS="0")
        project = self.projects[project_name(server, database)]
        if kind == "before":
            # Generated from the template before its native data path (BEFORE_COMMIT),
            # which had PostgreSQL's path only.
            env["BENCH_BEFORE"] = "1"
            project = self.projects[config]
        name = f"{config}-{int(time.monotonic() * 1000)}"
        return project, asgi_server(name, project, self.logdir, env)

    def http(self, *args, **kwargs) -> None:
        """One wrk cell (measure_http()), its row added to the run's."""
        self.rows.append(self.measure_http(*args, **kwargs))

    def measure_http(
        self,
        scenario: str,
        config: str,
        path: str,
        conns: int,
        via: str = "",
        env: dict | None = None,
        method: str = "GET",
        bodies: tuple[str, ...] = (),
        label: str = "",
        beside: Upstream | None = None,
        database: str = DATABASES[0],
    ) -> dict:
        """One wrk cell's row: `via` is "", "nginx" (TCP to the app) or "nginx-uds";
        `env` is added to the server's (REDIS_URL, as in every cell); with
        `bodies`, wrk sends them in turn with `method` (load.wrk). `label` names the
        row instead of `config` (cells of one configuration with different `env`);
        the CPU of `beside`, a process the app sends to, is in the row; `database`
        is the one the service is generated for and runs on. A cell that fails is
        tried once more; the first failure stays in its row. A method other than a
        read's shows the bench's API key (the one issued in that database)."""
        token = self.databases[database].token
        headers = {} if method in PUBLIC_METHODS else bearer(token)
        request = {"method": method, "bodies": bodies, "headers": headers}
        redis_url = f"{self.redis_url}/{DATABASES.index(database)}"
        env = {"REDIS_URL": redis_url, **(env or {})}
        args = (scenario, config, path, conns, via, env, request, beside, database)
        row = self._http(*args)
        if "failed" in row:
            first = row["failed"]
            row = self._http(*args)
            row["first_attempt_failed"] = first
        if label:
            row["config"] = label
        print(f"bench: {row}", flush=True)
        return row

    def _http(
        self, scenario, config, path, conns, via, env, request, beside, database
    ) -> dict:
        row = {
            "scenario": scenario,
            "config": config,
            "via": via or "direct",
            "database": database,
        }
        started = []
        try:
            if config == "nginx-alone":
                front = nginx_alone()
                started.append(front)
                front.start()
                port = front.port

                def pids(front=front):
                    return process_tree(front.process.pid)
            else:
                env = dict(env)
                if via == "nginx-uds":
                    # Under the log directory: readable by Nginx's workers.
                    env["UDS"] = str(self.logdir / f"app-{time.monotonic_ns()}.sock")
                project, app = self.server(config, database, **env)
                started.append(app)
                app.start()
                port, pids = app.port, app.pids
                if via:
                    front = Nginx.in_front(project, [app])
                    started.append(front)
                    front.start()
                    port = front.port

                    def pids(app=app, front=front):
                        return app.pids() + process_tree(front.process.pid)

            s = self.settings
            base_url = f"http://127.0.0.1:{port}"
            upstream_before = cpu_seconds([self.upstream_pid]), time.monotonic()
            beside_before = cpu_seconds([beside.process.pid]) if beside else 0.0
            database_pid = self.databases[database].server_pid
            database_before = tree_cpu_seconds(database_pid)
            measured = load.wrk(
                base_url, path, conns, s.seconds, s.warmup, pids, **request
            )
            elapsed = time.monotonic() - upstream_before[1]
            # Over the warm-up and the measurement, as for the processes beside.
            row["database_cpu_cores"] = (
                tree_cpu_seconds(database_pid) - database_before
            ) / elapsed
            if path == "/bench/upstream":
                row["upstream_cpu_cores"] = (
                    cpu_seconds([self.upstream_pid]) - upstream_before[0]
                ) / elapsed
            if beside:
                row["beside_cpu_cores"] = (
                    cpu_seconds([beside.process.pid]) - beside_before
                ) / elapsed
            if via:
                row["nginx_cpu_cores"] = sum(
                    cores
                    for pid, cores in measured.by_process.items()
                    if pid in process_tree(front.process.pid)
                )
            row.update(
                req_s=measured.requests_per_second,
                p50_ms=measured.p50_ms,
                p99_ms=measured.p99_ms,
                errors=measured.errors,
                requests=measured.requests,
                cpu_cores=measured.cpu_cores,
                cpu_us_per_req=measured.cpu_us_per_request,
                busiest=measured.busiest,
            )
        except Exception as exc:
            row["failed"] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
            for process in started:
                print(f"bench: the end of {process.log}:\n{process.output()[-3000:]}")
        finally:
            for process in reversed(started):
                if process.process is not None:
                    process.stop()
        return row

    def idle(self, scenario: str, server: str):
        """Idle connections held by one worker, WebSockets ("websockets") or event
        streams ("idle-streams"): how many, and memory per connection."""
        row = {"scenario": scenario, "config": f"service-{server}", "via": "direct"}
        _, app = self.server(f"service-{server}", WEB_CONCURRENCY="1")
        app.start()
        if scenario == "websockets":
            url = f"ws://127.0.0.1:{app.port}/ws/items"

            async def hold(count):
                return await load.hold_websockets(url, count, ORIGIN)

            close, is_open = load.close_websockets, lambda c: c.close_code is None
        else:

            async def hold(count):
                return await load.hold_streams(app.port, count)

            close, is_open = load.close_streams, operator.attrgetter("open")
        try:
            # The first connections load code.
            asyncio.run(self._hold_and_close(hold, close, 10))
            before = resident_bytes(app.pids())
            row.update(asyncio.run(self._measure(hold, close, is_open, app, before)))
        except Exception as exc:
            row["failed"] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
        finally:
            app.stop()
        print(f"bench: {row}", flush=True)
        self.rows.append(row)

    async def _hold_and_close(self, hold, close, count):
        connections, _ = await hold(count)
        await close(connections)

    async def _measure(self, hold, close, is_open, app, before: int) -> dict:
        wanted = self.settings.websockets
        started = time.monotonic()
        connections, failed = await hold(wanted)
        opening = time.monotonic() - started
        await asyncio.sleep(2)
        held = resident_bytes(app.pids())
        # Still open after the wait: none was dropped while idle.
        still_open = sum(1 for c in connections if is_open(c))
        await close(connections)
        await asyncio.sleep(3)
        after = resident_bytes(app.pids())
        return {
            "wanted": wanted,
            "held": still_open,
            "errors": failed + len(connections) - still_open,
            "open_seconds": opening,
            "rss_before_mib": before / 2**20,
            "rss_held_mib": held / 2**20,
            "rss_after_close_mib": after / 2**20,
            "kib_per_connection": (held - before) / 1024 / max(still_open, 1),
        }

    def sse(self, via: str = ""):
        """Event fan-out from one worker (the in-memory channel layer) to N streams."""
        config = "service-uvicorn"
        row = {"scenario": "sse", "config": config, "via": via or "direct"}
        started = []
        try:
            project, app = self.server(config, WEB_CONCURRENCY="1")
            app.start()
            started.append(app)
            port = app.port
            if via:
                front = Nginx.in_front(project, [app])
                front.start()
                started.append(front)
                port = front.port
            s = self.settings
            before = cpu_seconds(app.pids())
            began = time.monotonic()
            result = asyncio.run(load.sse_fan_out(port, s.sse_clients, s.seconds))
            cores = (cpu_seconds(app.pids()) - before) / (time.monotonic() - began)
            row.update(clients=s.sse_clients, cpu_cores=cores, **result)
            row["errors"] = result["lost"]
        except Exception as exc:
            row["failed"] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
        finally:
            for process in reversed(started):
                process.stop()
        print(f"bench: {row}", flush=True)
        self.rows.append(row)


def tiny_json(cells: Cells) -> None:
    tiny = load.TINY
    cells.http("tiny-json", "nginx-alone", tiny, 64)
    for config in WSGI:
        cells.http("tiny-json", config, tiny, 64)
    for server in SERVERS:
        cells.http("tiny-json", f"stock-{server}", tiny, 64)
        cells.http("tiny-json", f"service-{server}", tiny, 64)
    cells.http("tiny-json", "service-uvicorn-no-metrics", tiny, 64)
    cells.http("tiny-json", "service-uvicorn", tiny, 64, via="nginx")
    cells.http("tiny-json", "service-uvicorn", tiny, 64, via="nginx-uds")
    cells.http("tiny-json", "service-granian", tiny, 64, via="nginx")


def upstream_50ms(cells: Cells) -> None:
    upstream = "/bench/upstream"
    for config in (*WSGI, "stock-uvicorn"):
        cells.http("upstream-50ms", config, upstream, 256)
    for server in SERVERS:
        cells.http("upstream-50ms", f"service-{server}", upstream, 256)
    cells.http("upstream-50ms", "service-uvicorn", upstream, 256, via="nginx")


def on_every_database(configs) -> list[tuple[str, str]]:
    """(configuration, database): each configuration on every database of
    DATABASES, one after the other, so that the cells a ratio compares run close
    in time; BEFORE on the first alone (the template had no other database's
    path at BEFORE_COMMIT)."""
    return [
        (config, database)
        for config in configs
        for database in DATABASES
        if config != BEFORE or database == DATABASES[0]
    ]


def orm_read(cells: Cells) -> None:
    """bench_urls.orm: core.reads in the service, Django's async ORM in stock
    Django and before-uvicorn, its sync ORM under WSGI; the same 10 rows, on
    each database."""
    configs = (*WSGI, "stock-uvicorn", *(f"service-{s}" for s in SERVERS), BEFORE)
    for config, database in on_every_database(configs):
        cells.http("orm-read", config, "/bench/orm", 64, database=database)


def cached_read(cells: Cells) -> None:
    """The service's own GET /api/items/<id>, a Redis cache hit after the first
    request (the entry lives ITEM_CACHE_SECONDS, 30 s: at most one miss a cell);
    under WSGI bench_urls.item_sync, the same through Django's sync cache API.
    On each database too, though a hit reads none from it: a check that nothing
    else on the read path depends on the database."""
    configs = (*WSGI, *(f"service-{s}" for s in SERVERS), BEFORE)
    for config, database in on_every_database(configs):
        cells.http("cached-read", config, "/api/items/1", 64, database=database)


# POST /api/items: the same item each time (names need not be unique), with two
# tags that exist after the first request.
NEW_ITEM = json.dumps(
    {
        "name": "bench item",
        "category": "bench",
        "price": "2.50",
        "quantity": 5,
        "tags": ["bench-a", "bench-b"],
    }
)
# POST /api/items/restock: 10 of the 100 seeded items (ids 1-100 in the new
# database), the next 10 with each request: concurrent requests spread over 10
# sets of rows instead of all queueing for one set's row locks (the service locks
# them; the service before did not), so the transaction itself is measured more
# than the wait for a lock.
RESTOCKS = tuple(
    json.dumps(
        {"changes": [{"id": first + n, "quantity": first + n} for n in range(10)]}
    )
    for first in range(1, 101, 10)
)


def write(cells: Cells) -> None:
    """The service's own POST /api/items and /api/items/restock (each write one
    transaction in one sync_to_async call, after the check of the API key every
    write shows; before-uvicorn: the endpoints as they were, without keys),
    under WSGI the same transaction bodies in bench_urls, which check no key.
    On each database. Runs after the read scenarios: it adds rows to the items
    table."""
    configs = (*WSGI, "service-uvicorn", BEFORE)
    for scenario, path, bodies in (
        ("write-create", "/api/items", (NEW_ITEM,)),
        ("write-restock", "/api/items/restock", RESTOCKS),
    ):
        for config, database in on_every_database(configs):
            cells.http(
                scenario,
                config,
                path,
                64,
                method="POST",
                bodies=bodies,
                database=database,
            )


# The sampling ratios the tracing scenario compares with tracing off. At 0%
# every request starts a span that is never recorded: what tracing costs a
# request that is not sampled, apart from the export.
TRACE_SAMPLES = {"0%": "0", "10%": "0.1", "100%": "1.0"}
# Tracing's cost is a few percent, less than what one cell's throughput varies
# from one cell to the next on these machines (up to 14% for the same
# configuration in two runs): each configuration is measured in this many
# rounds, the configurations in turn, and its row is the median round.
TRACE_ROUNDS = 5


def tracing(cells: Cells) -> None:
    """The cost of traces on the tiny JSON: the service with tracing off, and
    with no request, one in ten and every request sampled, its spans exported to a
    collector's stand-in (bench.upstream answering at once, on the same cores:
    its CPU is in the row). TRACE_ROUNDS rounds, each row the median."""
    collector = Upstream(0.0, cells.logdir)
    collector.start()
    try:
        configurations = {"tracing-off": ({}, None)}
        for name, ratio in TRACE_SAMPLES.items():
            env = {
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector.port}",
                "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                "OTEL_TRACES_SAMPLER_ARG": ratio,
            }
            configurations[f"tracing-{name}"] = (env, collector)
        rounds = {label: [] for label in configurations}
        for _ in range(TRACE_ROUNDS):
            for label, (env, beside) in configurations.items():
                rounds[label].append(
                    cells.measure_http(
                        "tracing",
                        "service-uvicorn",
                        load.TINY,
                        64,
                        env=env,
                        label=label,
                        beside=beside,
                    )
                )
        cells.rows.extend(median_round(rows) for rows in rounds.values())
    finally:
        collector.stop()


def median_round(rows: list[dict]) -> dict:
    """The round of median throughput, with every round's throughput beside it
    (`rounds_req_s`); a failed round counts as none."""
    measured = sorted(
        (row for row in rows if "failed" not in row), key=lambda row: row["req_s"]
    )
    if not measured:
        return rows[0]
    return {
        **measured[(len(measured) - 1) // 2],
        "rounds_req_s": [row.get("req_s") for row in rows],
    }


def websockets(cells: Cells) -> None:
    for server in ("uvicorn", "granian"):
        cells.idle("websockets", server)


def idle_streams(cells: Cells) -> None:
    for server in ("uvicorn", "granian"):
        cells.idle("idle-streams", server)


def sse(cells: Cells) -> None:
    cells.sse()
    cells.sse(via="nginx")


# Every scenario in the order a run takes them (python -m bench --only picks some).
SCENARIOS = {
    "tiny-json": tiny_json,
    "upstream-50ms": upstream_50ms,
    "orm-read": orm_read,
    "cached-read": cached_read,
    "write": write,
    "websockets": websockets,
    "idle-streams": idle_streams,
    "sse": sse,
    "tracing": tracing,
}
# The scenarios that run before-uvicorn: the project from BEFORE_COMMIT is only
# generated for them.
WITH_BEFORE = ("orm-read", "cached-read", "write")
# The scenarios that run on every database of DATABASES (on_every_database()):
# the services for the others, and their servers, are only made for them.
ON_EVERY_DATABASE = ("orm-read", "cached-read", "write")


def run_all(cells: Cells, names=tuple(SCENARIOS)) -> None:
    for name in names:
        SCENARIOS[name](cells)
