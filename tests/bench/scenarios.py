"""The scenarios, each over the configurations it compares. One cell starts its
servers, warms up, measures, stops them; a cell that fails is recorded as such
and the run goes on."""

import asyncio
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from bench import load
from bench.deploy import (
    asgi_server,
    cpu_seconds,
    nginx_alone,
    process_tree,
    resident_bytes,
    wsgi_server,
)
from edge import Nginx

SERVERS = ("uvicorn", "granian", "gunicorn-uvicorn")
ORIGIN = "http://127.0.0.1"


@dataclass
class Settings:
    seconds: float
    warmup: float
    websockets: int
    sse_clients: int


class Cells:
    """Starts configurations by name and records one row per measured cell."""

    def __init__(
        self, projects: dict, logdir: Path, env: dict, settings: Settings, upstream_pid
    ):
        self.projects, self.logdir, self.env = projects, logdir, env
        self.settings, self.upstream_pid = settings, upstream_pid
        self.rows: list[dict] = []

    def server(self, config: str, **env):
        env = {**self.env, **env}
        if config in ("wsgi-sync", "wsgi-gthread"):
            worker = config.removeprefix("wsgi-")
            return self.projects["gunicorn-uvicorn"], wsgi_server(
                config, self.projects["gunicorn-uvicorn"], self.logdir, env, worker
            )
        kind, server = config.split("-", 1)
        if server.endswith("-no-metrics"):
            server = server.removesuffix("-no-metrics")
            env["BENCH_METRICS"] = "0"
        if kind == "stock":
            env.update(BENCH_STOCK="1", BENCH_METRICS="0")
        name = f"{config}-{int(time.monotonic() * 1000)}"
        project = self.projects[server]
        return project, asgi_server(name, project, self.logdir, env)

    def http(self, scenario: str, config: str, path: str, conns: int, via: str = ""):
        """One wrk cell: `via` is "", "nginx" (TCP to the app) or "nginx-uds". A
        cell that fails is tried once more; the first failure stays in its row."""
        row = self._http(scenario, config, path, conns, via)
        if "failed" in row:
            first = row["failed"]
            row = self._http(scenario, config, path, conns, via)
            row["first_attempt_failed"] = first
        print(f"bench: {row}", flush=True)
        self.rows.append(row)

    def _http(self, scenario, config, path, conns, via) -> dict:
        row = {"scenario": scenario, "config": config, "via": via or "direct"}
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
                env = {}
                if via == "nginx-uds":
                    # Under the log directory: readable by Nginx's workers.
                    env["UDS"] = str(self.logdir / f"app-{time.monotonic_ns()}.sock")
                project, app = self.server(config, **env)
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
            measured = load.wrk(base_url, path, conns, s.seconds, s.warmup, pids)
            if path == "/bench/upstream":
                row["upstream_cpu_cores"] = (
                    cpu_seconds([self.upstream_pid]) - upstream_before[0]
                ) / (time.monotonic() - upstream_before[1])
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

    def websockets(self, server: str):
        """Idle WebSockets held by one worker: how many, and memory per connection."""
        row = {"scenario": "websockets", "config": f"service-{server}", "via": "direct"}
        _, app = self.server(f"service-{server}", WEB_CONCURRENCY="1")
        app.start()
        try:
            url = f"ws://127.0.0.1:{app.port}/ws/items"
            asyncio.run(self._hold(url, 10))  # first connections load code
            before = resident_bytes(app.pids())
            row.update(asyncio.run(self._measure(url, app, before)))
        except Exception as exc:
            row["failed"] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
        finally:
            app.stop()
        print(f"bench: {row}", flush=True)
        self.rows.append(row)

    async def _hold(self, url, count):
        connections, failed = await load.hold_websockets(url, count, ORIGIN)
        await load.close_websockets(connections)
        return len(connections), failed

    async def _measure(self, url, app, before: int) -> dict:
        wanted = self.settings.websockets
        started = time.monotonic()
        connections, failed = await load.hold_websockets(url, wanted, ORIGIN)
        opening = time.monotonic() - started
        await asyncio.sleep(2)
        held = resident_bytes(app.pids())
        # Still open after the wait: none was dropped while idle.
        still_open = sum(1 for c in connections if c.close_code is None)
        await load.close_websockets(connections)
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


def run_all(cells: Cells) -> None:
    tiny, upstream, orm = "/healthz", "/bench/upstream", "/bench/orm"
    cells.http("tiny-json", "nginx-alone", tiny, 64)
    for config in ("wsgi-sync", "wsgi-gthread"):
        cells.http("tiny-json", config, tiny, 64)
    for server in SERVERS:
        cells.http("tiny-json", f"stock-{server}", tiny, 64)
        cells.http("tiny-json", f"service-{server}", tiny, 64)
    cells.http("tiny-json", "service-uvicorn-no-metrics", tiny, 64)
    cells.http("tiny-json", "service-uvicorn", tiny, 64, via="nginx")
    cells.http("tiny-json", "service-uvicorn", tiny, 64, via="nginx-uds")
    cells.http("tiny-json", "service-granian", tiny, 64, via="nginx")

    for config in ("wsgi-sync", "wsgi-gthread", "stock-uvicorn"):
        cells.http("upstream-50ms", config, upstream, 256)
    for server in SERVERS:
        cells.http("upstream-50ms", f"service-{server}", upstream, 256)
    cells.http("upstream-50ms", "service-uvicorn", upstream, 256, via="nginx")

    for config in ("wsgi-sync", "wsgi-gthread", "stock-uvicorn"):
        cells.http("orm-read", config, orm, 64)
    for server in SERVERS:
        cells.http("orm-read", f"service-{server}", orm, 64)

    for server in ("uvicorn", "granian"):
        cells.websockets(server)
    cells.sse()
    cells.sse(via="nginx")
