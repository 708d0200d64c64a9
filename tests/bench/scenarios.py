"""The scenarios, each over the configurations it compares. One cell starts its
servers, warms up, measures, stops them; a cell that fails is recorded as such
and the run goes on."""

import asyncio
import gc
import itertools
import json
import math
import statistics
import time
import traceback
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from bench import load
from bench.deploy import (
    DATABASES,
    Upstream,
    asgi_server,
    busy_seconds,
    connections_by_process,
    cpu_by_process,
    cpu_seconds,
    file_room,
    listening_pid,
    nginx_alone,
    process_tree,
    project_name,
    resident_bytes,
    tree_cpu_seconds,
    wsgi_server,
)
from edge import Nginx, bearer
from services import redis

SERVERS = ("uvicorn", "granian", "gunicorn-uvicorn")
WSGI = ("wsgi-sync", "wsgi-gthread")
# The service before its native data path, generated from BEFORE_COMMIT.
BEFORE = "before-uvicorn"
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
    # Rounds of the scenarios measured by turns (Cells.alternate).
    rounds: int
    sse_clients: int
    # The idle curve: these counts of connections, then the most a worker holds
    # up to idle_most; its CPU measured over idle_cpu_seconds at each.
    idle_counts: tuple[int, ...]
    idle_most: int
    idle_cpu_seconds: float
    # The broadcast: subscribers of each kind, events, seconds between them.
    broadcast_websockets: int
    broadcast_streams: int
    broadcast_events: int
    broadcast_spacing: float


# How long Cells.alternate loads one configuration at a time, and how long it
# measures what they take while idle.
SLOT_SECONDS = 1
IDLE_SECONDS = 10


@dataclass
class Alternated:
    """One configuration of Cells.alternate, named as for Cells.measure_http."""

    config: str
    via: str = ""
    env: dict = field(default_factory=dict)
    label: str = ""
    # A process the app sends to (a collector's stand-in): its CPU during the
    # configuration's slots is in the row.
    beside: Upstream | None = None
    database: str = DATABASES[0]


class _Alternation:
    """A configuration under Cells.alternate: its row, and what its slots and its
    processes' CPU add up to. Its processes' CPU is counted from the start of
    the first round to the end of the last, so that work its requests left
    behind (a tracing exporter's batches) counts to it whichever slot it falls
    in, less what they take while idle (Uvicorn's tick, Gunicorn's arbiter: 0.5%
    of a core), measured before the rounds, for the time it waited for its
    turns."""

    def __init__(self, row: dict, cell: Alternated, served):
        self.row, self.cell, self.served = row, cell, served
        self.requests, self.seconds, self.errors = 0, 0.0, 0
        self.p50s, self.p99s = [], []
        self.beside_seconds = 0.0
        # Before and after the idle measurement, then at the end of each round:
        # (when, CPU seconds by pid, requests and seconds of its slots so far).
        self.marks = []
        # CPU seconds per second by pid while idle (finish(), from the first
        # two marks).
        self.idle = {}
        self.nginx_pids = set()

    def mark(self) -> None:
        _, pids, front = self.served
        if front is not None and not self.nginx_pids:
            self.nginx_pids = set(process_tree(front.process.pid))
        now = time.monotonic()
        self.marks.append((now, cpu_by_process(pids()), self.requests, self.seconds))

    def slot(self, path: str, conns: int) -> None:
        base_url, pids, _ = self.served
        beside = self.cell.beside
        before = cpu_seconds([beside.process.pid]) if beside else 0.0
        measured = load.wrk(base_url, path, conns, SLOT_SECONDS, 0, pids)
        if beside:
            self.beside_seconds += cpu_seconds([beside.process.pid]) - before
        self.requests += measured.requests
        rate = measured.requests_per_second
        self.seconds += measured.requests / rate if rate else SLOT_SECONDS
        self.errors += measured.errors
        self.p50s.append(measured.p50_ms)
        self.p99s.append(measured.p99_ms)

    def _used(self, start, end) -> dict[int, float]:
        """CPU seconds by pid between two marks, less the idle rate's for the
        time between them outside its slots."""
        (t0, cpu0, _, sec0), (t1, cpu1, _, sec1) = start, end
        waited = (t1 - t0) - (sec1 - sec0)
        return {
            pid: cpu1[pid] - cpu0.get(pid, 0.0) - self.idle.get(pid, 0.0) * waited
            for pid in cpu1
        }

    def finish(self) -> None:
        """The row, from the slots and the marks."""
        (t0, cpu0, _, _), (t1, cpu1, _, _) = self.marks[:2]
        self.idle = {pid: (cpu1[pid] - cpu0.get(pid, 0.0)) / (t1 - t0) for pid in cpu1}
        rounds = self.marks[1:]
        used = self._used(rounds[0], rounds[-1])
        cpu = sum(used.values())
        rounds_req_s, rounds_cpu = [], []
        for start, end in itertools.pairwise(rounds):
            requests, seconds = end[2] - start[2], end[3] - start[3]
            spent = sum(self._used(start, end).values())
            rounds_req_s.append(requests / seconds if seconds else None)
            rounds_cpu.append(spent * 1e6 / requests if requests else None)
        self.row.update(
            req_s=self.requests / self.seconds,
            # The median slot's.
            p50_ms=statistics.median(self.p50s),
            p99_ms=statistics.median(self.p99s),
            errors=self.errors,
            requests=self.requests,
            cpu_cores=cpu / self.seconds,
            cpu_us_per_req=cpu * 1e6 / self.requests if self.requests else None,
            busiest=sorted((c / self.seconds for c in used.values()), reverse=True)[:2],
            idle_cpu_cores=sum(self.idle.values()),
            rounds_req_s=rounds_req_s,
            rounds_cpu_us_per_req=rounds_cpu,
        )
        if self.nginx_pids:
            self.row["nginx_cpu_cores"] = (
                sum(used.get(pid, 0.0) for pid in self.nginx_pids) / self.seconds
            )
        if self.cell.beside:
            self.row["beside_cpu_cores"] = self.beside_seconds / self.seconds


# Client processes holding the idle curve's connections: each holds at most
# 20,000 file descriptors, as the worker does.
IDLE_CLIENTS = 2
# File descriptors a worker keeps free of the idle curve's connections, for what
# it opens beside them (its database and Redis connections, logs).
FILE_MARGIN = 50
# Client processes of the broadcast: one Python process reading 10,000
# WebSockets would measure its own lag more than the server's.
BROADCAST_CLIENTS = {"websockets": 4, "streams": 2}
# Python's own thresholds (the services run on the bench's Python).
PYTHON_GC_THRESHOLDS = ",".join(map(str, gc.get_threshold()))
# Rounds of opening the broadcast's subscribers, each opening those missing.
OPEN_ROUNDS = 5
# How long the broadcast waits for the last events after the last was published.
DRAIN_SECONDS = 30
# The recycling cell: idle WebSockets over two workers, whose memory limit is the
# chart's (server.workerMaxRssMiB) and bin/serve's time over it; 5,000 WebSockets
# take a worker above it on either server (the idle cells: 38 and 167 KiB each).
RECYCLE_WEBSOCKETS = 10_000
RECYCLE_LIMIT_MIB = 200
RECYCLE_SECONDS = 30


def subscribe_url(kind: str, port: int) -> str:
    """Where a subscriber of `kind` (load.KINDS) connects."""
    if kind == "websockets":
        return f"ws://127.0.0.1:{port}/ws/items"
    return f"http://127.0.0.1:{port}/api/items/events"


def percentile(ordered: list[float], q: float) -> float | None:
    """The nearest-rank `q`th percentile of sorted values; None for none."""
    if not ordered:
        return None
    return ordered[max(0, math.ceil(len(ordered) * q / 100) - 1)]


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
        try:
            with self._serving(config, via, env, database) as (base_url, pids, front):
                s = self.settings
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
        return row

    @contextmanager
    def _serving(self, config: str, via: str, env: dict, database: str):
        """`config` started on `database`, behind Nginx with `via` ("nginx", TCP
        to the app, or "nginx-uds"): yields the URL to load, a function giving
        the pids of the processes serving it, and Nginx (None without `via`);
        stops them on leaving. On a failure, the end of each one's log is printed."""
        started = []
        front = None
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

            yield f"http://127.0.0.1:{port}", pids, front
        except Exception:
            for process in started:
                print(f"bench: the end of {process.log}:\n{process.output()[-3000:]}")
            raise
        finally:
            for process in reversed(started):
                if process.process is not None:
                    process.stop()

    def alternate(self, scenario: str, path: str, conns: int, cells: list) -> None:
        """GETs of `path` over `conns` connections to the configurations of
        `cells` (Alternated), all served at once: each warmed up, their idle CPU
        measured over IDLE_SECONDS, then each loaded in turn for SLOT_SECONDS at a
        time, in Settings.rounds rounds of `seconds` slots of every configuration,
        the order turned by one each round. One row each: its throughput over all
        its slots, its CPU per request as _Alternation counts it; each round's
        throughput and CPU per request in `rounds_req_s` and
        `rounds_cpu_us_per_req`.

        The targets these scenarios are judged on are differences of 10-30%,
        less than what one configuration's 10-second cell varied from one cell to
        the next on these machines (CPU per request by up to 40% within a run,
        throughput by 60% between runs): the machine's speed changes within
        seconds. Loaded by turns a second at a time, every configuration meets
        the same changes."""
        s = self.settings
        entries = []
        with ExitStack() as stack:
            for cell in cells:
                row = {
                    "scenario": scenario,
                    "config": cell.label or cell.config,
                    "via": cell.via or "direct",
                    "database": cell.database,
                }
                redis_url = f"{self.redis_url}/{DATABASES.index(cell.database)}"
                env = {"REDIS_URL": redis_url, **cell.env}
                try:
                    served = stack.enter_context(
                        self._serving(cell.config, cell.via, env, cell.database)
                    )
                    base_url, pids, _ = served
                    load.wrk(base_url, path, conns, s.warmup, 0, pids)
                    load.settle(base_url)
                except Exception as exc:
                    row["failed"] = f"{type(exc).__name__}: {exc}"
                    traceback.print_exc()
                    served = None
                entries.append(_Alternation(row, cell, served))
            running = [entry for entry in entries if entry.served]
            for entry in running:
                entry.mark()
            time.sleep(IDLE_SECONDS)
            for entry in running:
                entry.mark()
            for turn in range(s.rounds):
                first = turn % len(running) if running else 0
                for _ in range(int(s.seconds / SLOT_SECONDS)):
                    for entry in running[first:] + running[:first]:
                        if "failed" in entry.row:
                            continue
                        try:
                            entry.slot(path, conns)
                        except Exception as exc:
                            entry.row["failed"] = f"{type(exc).__name__}: {exc}"
                            traceback.print_exc()
                for entry in running:
                    entry.mark()
        for entry in entries:
            if "failed" not in entry.row:
                entry.finish()
            print(f"bench: {entry.row}", flush=True)
            self.rows.append(entry.row)

    def idle(self, scenario: str, server: str):
        """Idle connections held by one worker, WebSockets ("websockets") or event
        streams ("idle-streams"), on the in-memory channel layer: the worker's
        memory per connection and its CPU while they idle, at each count of
        Settings.idle_counts and at the most its file descriptors allow (up to
        Settings.idle_most); then its memory once all are closed."""
        config = f"service-{server}"
        row = {"scenario": scenario, "config": config, "via": "direct"}
        _, app = self.server(config, WEB_CONCURRENCY="1")
        app.start()
        kind = "websockets" if scenario == "websockets" else "streams"
        try:
            url = subscribe_url(kind, app.port)
            with load.Subscribers(kind, url, IDLE_CLIENTS) as clients:
                # The first connections load code.
                clients.open(10)
                clients.close()
                row.update(self._curve(app, clients))
        except Exception as exc:
            row["failed"] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
        finally:
            app.stop()
        print(f"bench: {row}", flush=True)
        self.rows.append(row)

    def _curve(self, app, clients: load.Subscribers) -> dict:
        s = self.settings
        before = resident_bytes(app.pids())
        # Each connection is a file descriptor in the worker, which cannot raise
        # its limit (RLIMIT_NOFILE, 20,000 here): that bounds the last count.
        room = min(file_room(pid) for pid in app.pids()) - FILE_MARGIN
        most = min(s.idle_most, room)
        points, opened = [], 0
        for count in sorted({*(c for c in s.idle_counts if c < most), most}):
            started = time.monotonic()
            refused = clients.open(count - opened)
            opening, opened = time.monotonic() - started, count
            time.sleep(2)
            rss = resident_bytes(app.pids())
            cpu, began = cpu_seconds(app.pids()), time.monotonic()
            # Long enough to take in every periodic task of each connection once:
            # Uvicorn's WebSocket ping (20 s) and the streams' keep-alive (15 s).
            time.sleep(s.idle_cpu_seconds)
            cores = (cpu_seconds(app.pids()) - cpu) / (time.monotonic() - began)
            # Still open after the wait: none was dropped while idle.
            held = clients.count()
            points.append(
                {
                    "connections": count,
                    "held": held,
                    "errors": count - held,
                    "refused": refused,
                    "open_seconds": opening,
                    "rss_mib": rss / 2**20,
                    "kib_per_connection": (rss - before) / 1024 / max(held, 1),
                    "idle_cpu_cores": cores,
                }
            )
            print(f"bench: {points[-1]}", flush=True)
        clients.close()
        time.sleep(3)
        return {
            "file_room": room + FILE_MARGIN,
            "rss_before_mib": before / 2**20,
            "rss_after_close_mib": resident_bytes(app.pids()) / 2**20,
            "points": points,
        }

    def recycling(self, server: str) -> None:
        """RECYCLE_WEBSOCKETS idle WebSockets over two workers, more than their
        memory limit (RECYCLE_LIMIT_MIB for RECYCLE_SECONDS) lets them hold: each
        worker's resident memory before and while they are held, when the server
        replaced each worker, and its new workers' memory. The idle cells show
        that a worker keeps its memory once its connections close; this is how
        the service gives it back. The clients do not reconnect here (the
        service's drain and the clients' reconnection are tests/test_serve.py's)."""
        row = {
            "scenario": "recycling",
            "config": f"service-{server}",
            "via": "direct",
            "subscribers": RECYCLE_WEBSOCKETS,
            "limit_mib": RECYCLE_LIMIT_MIB,
            "limit_seconds": RECYCLE_SECONDS,
        }
        limit = {
            "WORKER_MAX_RSS_MB": str(RECYCLE_LIMIT_MIB),
            "WORKER_MAX_RSS_SECONDS": str(RECYCLE_SECONDS),
        }
        self._subscribed(
            row,
            "websockets",
            limit,
            lambda app, _, clients: self._recycling(app, clients),
        )

    def _recycling(self, app, clients) -> dict:
        old = app.workers()
        before = [resident_bytes([pid]) / 2**20 for pid in old]
        started = time.monotonic()
        refused, _ = self._open(clients, RECYCLE_WEBSOCKETS)
        opening = time.monotonic() - started
        time.sleep(2)
        held = clients.count()
        held_mib = [resident_bytes([pid]) / 2**20 for pid in old]
        # Until each old worker has gone, and 5 s more for its replacement.
        replaced: dict[int, float] = {}
        deadline = time.monotonic() + RECYCLE_SECONDS + 120
        while len(replaced) < len(old) and time.monotonic() < deadline:
            alive = set(app.workers())
            for pid in old:
                if pid not in alive and pid not in replaced:
                    replaced[pid] = time.monotonic() - started
            time.sleep(0.5)
        time.sleep(5)
        new = [pid for pid in app.workers() if pid not in old]
        return {
            "refused": dict(refused),
            "open_seconds": opening,
            "held": held,
            "rss_before_mib": before,
            "rss_held_mib": held_mib,
            "replaced_after_seconds": sorted(replaced.values()),
            "rss_new_mib": [resident_bytes([pid]) / 2**20 for pid in new],
            "still_open": clients.count(),
        }

    def _open(self, clients, count: int) -> tuple[Counter, int]:
        """Opens `count` subscribers, in rounds: one refused, or closed once open,
        is tried again as a client would reconnect (the service does either while
        its Redis connection pool is exhausted: WebSockets with 1013, streams with
        an "unavailable" event). Returns how many were refused, by reason, and
        how many opened."""
        refused, opened = Counter(), 0
        for _ in range(OPEN_ROUNDS):
            wanted = count - clients.count()
            if not wanted:
                break
            failed = clients.open(wanted)
            refused.update(failed)
            opened += wanted - sum(failed.values())
        return refused, opened

    def broadcast(self, kind: str, server: str, gc_thresholds: str = "") -> None:
        """Settings.broadcast_events events, one at a time, each to every one of
        many subscribers of `kind` ("websockets" or "streams") spread over two
        workers, through a Redis of its own (the channel layer is
        channels_redis): when each subscriber got each event, what was lost, and
        the CPU of the workers, of Redis and of the client processes. The
        workers' GC_THRESHOLDS are the service's default unless given."""
        s = self.settings
        count = s.broadcast_websockets if kind == "websockets" else s.broadcast_streams
        config = f"service-{server}"
        row = {
            "scenario": "broadcast",
            "config": config,
            "via": "direct",
            "kind": kind,
            "subscribers": count,
            "gc_thresholds": gc_thresholds,
        }
        thresholds = {"GC_THRESHOLDS": gc_thresholds} if gc_thresholds else {}
        self._subscribed(
            row,
            kind,
            thresholds,
            lambda app, redis_pid, clients: self._broadcast(
                app, redis_pid, clients, count
            ),
        )

    def _subscribed(self, row: dict, kind: str, env: dict, measure) -> None:
        """The cell of `row`: its server with two workers, through a Redis of its
        own, and `env`, with subscribers of `kind` that measure(app, redis_pid,
        clients) opens and measures into the row. A cell that fails says why, and
        where each worker was."""
        try:
            with redis() as server:
                redis_url = server.url
                redis_pid = listening_pid(urlsplit(redis_url).port)
                _, app = self.server(
                    row["config"],
                    WEB_CONCURRENCY="2",
                    REDIS_URL=f"{redis_url}/0",
                    **env,
                )
                app.start()
                try:
                    url = subscribe_url(kind, app.port)
                    processes = BROADCAST_CLIENTS[kind]
                    with load.Subscribers(kind, url, processes) as clients:
                        row.update(measure(app, redis_pid, clients))
                except Exception:
                    print(f"bench: the workers' stacks:\n{app.abort_with_stacks()}")
                    raise
                finally:
                    app.stop()
        except Exception as exc:
            row["failed"] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
        print(f"bench: {row}", flush=True)
        self.rows.append(row)

    def _broadcast(self, app, redis_pid: int, clients, count: int) -> dict:
        s = self.settings
        started = time.monotonic()
        refused, opened = self._open(clients, count)
        opening = time.monotonic() - started
        time.sleep(2)
        held = clients.count()
        # The workers are the server's processes that hold the subscribers.
        workers = connections_by_process(app.pids(), app.port)
        workers = {pid: n for pid, n in workers.items() if n > 0}
        watched = [*workers, redis_pid, *clients.pids()]
        before, busy, began = cpu_by_process(watched), busy_seconds(), time.monotonic()
        published = self._publish(app.port, s.broadcast_events, s.broadcast_spacing)
        arrivals = clients.collect([e["id"] for e in published], DRAIN_SECONDS)
        elapsed = time.monotonic() - began
        after, busy = cpu_by_process(watched), busy_seconds() - busy
        used = {pid: after.get(pid, 0.0) - before.get(pid, 0.0) for pid in watched}
        events, delays = [], []
        for event in published:
            times = sorted((t - event["sent"]) * 1e3 for t in arrivals[event["id"]])
            delays += times
            events.append(
                {
                    "publish_ms": (event["answered"] - event["sent"]) * 1e3,
                    "got": len(times),
                    "first_ms": times[0] if times else None,
                    "last_ms": times[-1] if times else None,
                }
            )
        delays.sort()
        lasts = sorted(e["last_ms"] for e in events if e["last_ms"] is not None)
        return {
            "held": held,
            "open_seconds": opening,
            "refused": dict(refused),
            "closed_once_open": opened - held,
            "events": events,
            "delivered": len(delays),
            "lost": held * len(published) - len(delays),
            # Every percentile, 0 to 100, for the plot of their distribution.
            "delay_percentiles_ms": [percentile(delays, q) for q in range(101)],
            "p50_ms": percentile(delays, 50),
            "p99_ms": percentile(delays, 99),
            "last_p50_ms": percentile(lasts, 50),
            "last_max_ms": lasts[-1] if lasts else None,
            "publish_p50_ms": percentile(sorted(e["publish_ms"] for e in events), 50),
            "window_seconds": elapsed,
            # By subscribers held, the most first.
            "workers": sorted(
                (
                    {"subscribers": n, "cpu_s_per_event": used[pid] / len(events)}
                    for pid, n in workers.items()
                ),
                key=lambda worker: -worker["subscribers"],
            ),
            "redis_cpu_s_per_event": used[redis_pid] / len(events),
            "clients_cpu_cores": sum(used[pid] for pid in clients.pids()) / elapsed,
            "machine_busy_cores": busy / elapsed,
        }

    def _publish(self, port: int, events: int, spacing: float) -> list[dict]:
        """Creates `events` items by the API, `spacing` seconds apart, each request
        sent on time whether the one before was answered or not (a slow answer
        does not space the events out); the service sends each one's
        item.created to the items group. Returns each item's id, and when its
        request was sent and answered (time.time())."""
        headers = {
            "Content-Type": "application/json",
            **bearer(self.databases[DATABASES[0]].token),
        }
        url = f"http://127.0.0.1:{port}/api/items"

        def create() -> dict:
            request = urllib.request.Request(url, NEW_ITEM.encode(), headers)
            sent = time.time()
            with urllib.request.urlopen(request, timeout=30) as response:
                item = json.load(response)
            return {"id": item["id"], "sent": sent, "answered": time.time()}

        first, requests = time.monotonic(), []
        with ThreadPoolExecutor(events) as pool:
            for n in range(events):
                time.sleep(max(0.0, first + n * spacing - time.monotonic()))
                requests.append(pool.submit(create))
        return [request.result() for request in requests]

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
    """Nginx alone (the ceiling) in a cell of its own, then every configuration
    a target compares, by turns (Cells.alternate)."""
    tiny = load.TINY
    cells.http("tiny-json", "nginx-alone", tiny, 64)
    configs = (
        *WSGI,
        *(f"{kind}-{server}" for server in SERVERS for kind in ("stock", "service")),
        "service-uvicorn-no-metrics",
    )
    fronted = (("uvicorn", "nginx"), ("uvicorn", "nginx-uds"), ("granian", "nginx"))
    cells.alternate(
        "tiny-json",
        tiny,
        64,
        [Alternated(config) for config in configs]
        + [Alternated(f"service-{server}", via=via) for server, via in fronted],
    )


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


def tracing(cells: Cells) -> None:
    """The cost of traces on the tiny JSON: the service with tracing off, and
    with no request, one in ten and every request sampled, its spans exported to a
    collector's stand-in (bench.upstream answering at once, on the same cores:
    its CPU is in the row). By turns (Cells.alternate)."""
    collector = Upstream(0.0, cells.logdir)
    collector.start()
    try:
        configurations = [Alternated("service-uvicorn", label="tracing-off")]
        for name, ratio in TRACE_SAMPLES.items():
            env = {
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector.port}",
                "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                "OTEL_TRACES_SAMPLER_ARG": ratio,
            }
            configurations.append(
                Alternated(
                    "service-uvicorn",
                    env=env,
                    label=f"tracing-{name}",
                    beside=collector,
                )
            )
        cells.alternate("tracing", load.TINY, 64, configurations)
    finally:
        collector.stop()


def websockets(cells: Cells) -> None:
    for server in ("uvicorn", "granian"):
        cells.idle("websockets", server)


def idle_streams(cells: Cells) -> None:
    for server in ("uvicorn", "granian"):
        cells.idle("idle-streams", server)


def sse(cells: Cells) -> None:
    cells.sse()
    cells.sse(via="nginx")


def recycling(cells: Cells) -> None:
    for server in ("uvicorn", "granian"):
        cells.recycling(server)


def broadcast(cells: Cells) -> None:
    """Each server and kind with the service's garbage-collector thresholds, and
    the WebSockets with Python's own too (core/collector.py says why they differ)."""
    for server in SERVERS:
        for kind in ("websockets", "streams"):
            cells.broadcast(kind, server)
        cells.broadcast("websockets", server, PYTHON_GC_THRESHOLDS)


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
    "broadcast": broadcast,
    "recycling": recycling,
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
