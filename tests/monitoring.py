"""A real Prometheus and Nginx exporter for a generated service, on 127.0.0.1, and
the observed stack: the service behind its Nginx, scraped by that Prometheus; or a
fleet of such services, all scraped by one Prometheus.

Prometheus runs the service's own deploy/prometheus/: its scrape jobs, recording
rules and alerts as generated. A fleet's Prometheus takes in every service's jobs
and rules, as a shared Prometheus does (deploy/prometheus/README.md). Only what a
test deployment must differ in is changed: the file_sd target files it writes, and
one-second scrape and evaluation intervals so that a test waits seconds, not
minutes.
"""

import json
import shutil
import time
import urllib.parse
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import yaml

from edge import App, Nginx, Process, Worker, readable_tempdir, serve, wait_until_ok
from harness import service_env
from matrix import DEFAULT_TEXT
from services import free_port, wait_for_port

# The `service` label of every series: the generated service's name.
SERVICE = DEFAULT_TEXT["project"]


class NginxExporter(Process):
    """Debian's prometheus-nginx-exporter reading the test Nginx's stub_status."""

    def __init__(self, nginx: Nginx, workdir: Path):
        self.port = free_port()
        super().__init__(
            [
                "prometheus-nginx-exporter",
                f"-nginx.scrape-uri=http://127.0.0.1:{nginx.status_port}/stub_status",
                f"-web.listen-address=127.0.0.1:{self.port}",
            ],
            workdir,
            service_env(),
            workdir / "nginx-exporter.log",
        )

    def start(self) -> None:
        super().start()
        wait_for_port(self.port)


def write_targets(config_dir: Path, targets: dict[str, list[str]]) -> None:
    """{"app": ["127.0.0.1:8000"], "nginx": [...]}: one file_sd file per job."""
    (config_dir / "targets").mkdir(exist_ok=True)
    for job, addresses in targets.items():
        (config_dir / "targets" / f"{job}.json").write_text(
            json.dumps([{"targets": addresses}])
        )


def shared_config(config_dir: Path, fleet: dict[Path, dict[str, list[str]]]) -> dict:
    """A configuration of every service's scrape jobs and rules, each service's
    deploy/prometheus/ copied into config_dir/<service>/ with its targets."""
    config = {"global": {}, "rule_files": [], "scrape_configs": []}
    for project, targets in fleet.items():
        own = config_dir / project.name
        shutil.copytree(project / "deploy" / "prometheus", own)
        write_targets(own, targets)
        service = yaml.safe_load((own / "prometheus.yml").read_text())
        # Relative paths are resolved against the shared file's directory.
        config["rule_files"] += [f"{project.name}/{f}" for f in service["rule_files"]]
        for job in service["scrape_configs"]:
            for discovery in job["file_sd_configs"]:
                discovery["files"] = [f"{project.name}/{f}" for f in discovery["files"]]
            config["scrape_configs"].append(job)
    return config


class Prometheus(Process):
    """Debian's Prometheus scraping {project: targets}: one service with its own
    configuration, or several with a shared one (shared_config)."""

    def __init__(self, fleet: dict[Path, dict[str, list[str]]]):
        self.port = free_port()
        home = readable_tempdir("prometheus-")
        config_dir = home / "config"
        config_file = config_dir / "prometheus.yml"
        if len(fleet) == 1:
            [(project, targets)] = fleet.items()
            shutil.copytree(project / "deploy" / "prometheus", config_dir)
            write_targets(config_dir, targets)
            config = yaml.safe_load(config_file.read_text())
        else:
            config_dir.mkdir()
            config = shared_config(config_dir, fleet)
        config["global"]["scrape_interval"] = "1s"
        config["global"]["evaluation_interval"] = "1s"
        config_file.write_text(yaml.safe_dump(config))
        super().__init__(
            [
                "prometheus",
                f"--config.file={config_file}",
                f"--storage.tsdb.path={home / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            home,
            service_env(),
            home / "prometheus.log",
        )

    def start(self) -> None:
        super().start()
        wait_until_ok(f"http://127.0.0.1:{self.port}/-/ready")

    def stop(self, *args, **kwargs) -> int:
        code = super().stop(*args, **kwargs)
        shutil.rmtree(self.cwd)
        return code

    def _get(self, path: str, **params) -> dict:
        url = f"http://127.0.0.1:{self.port}{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.load(response)

    def query(self, expr: str) -> list[dict]:
        """The instant vector of a PromQL expression, now."""
        answer = self._get("/api/v1/query", query=expr)
        assert answer["status"] == "success", answer
        return answer["data"]["result"]

    def value(self, expr: str) -> float | None:
        """The single number an expression gives now, or None if it gives none."""
        result = self.query(expr)
        assert len(result) <= 1, f"{expr} gives several series: {result}"
        return float(result[0]["value"][1]) if result else None

    def range_values(self, expr: str, since: float) -> list[float]:
        """The values of a single-series expression at each second from since."""
        answer = self._get(
            "/api/v1/query_range", query=expr, start=since, end=time.time(), step=1
        )
        assert answer["status"] == "success", answer
        result = answer["data"]["result"]
        assert len(result) <= 1, f"{expr} gives several series: {result}"
        return [float(value) for _, value in result[0]["values"]] if result else []

    def wait_for(self, expr: str, expected: float, seconds: float = 30) -> float | None:
        """Polls until the expression equals expected; returns the last value seen,
        so that the caller's assertion shows what Prometheus had instead."""
        deadline = time.monotonic() + seconds
        while (seen := self.value(expr)) != expected and time.monotonic() < deadline:
            time.sleep(0.5)
        return seen

    def targets(self) -> list[dict]:
        return self._get("/api/v1/targets")["data"]["activeTargets"]

    def rules(self) -> list[dict]:
        return [
            rule
            for group in self._get("/api/v1/rules")["data"]["groups"]
            for rule in group["rules"]
        ]

    def queries_without_data(self, queries: dict[str, str], seconds: float = 15):
        """Those of {name: PromQL} that still give nothing after `seconds`.

        A series first written at the end of the traffic needs two scrapes before
        rate() has data: a few seconds at the tests' 1 s interval."""
        deadline = time.monotonic() + seconds
        while queries and time.monotonic() < deadline:
            queries = {name: q for name, q in queries.items() if not self.query(q)}
            time.sleep(1)
        return queries

    def evaluated_rules(self, seconds: float = 30) -> list[dict]:
        """Every rule, once each has been evaluated at least once."""
        deadline = time.monotonic() + seconds
        rules = self.rules()
        while any(rule["health"] == "unknown" for rule in rules):
            assert time.monotonic() < deadline, "rules never evaluated"
            time.sleep(0.5)
            rules = self.rules()
        return rules


def failing(rules: list[dict]) -> str:
    """The rules that failed to evaluate, one line each."""
    return "\n".join(
        f"{rule['name']}: {rule['health']} {rule.get('lastError', '')}"
        for rule in rules
        if rule["health"] != "ok" or rule.get("lastError")
    )


@dataclass
class Observed:
    """A running observed stack."""

    app: App
    nginx: Nginx
    prometheus: Prometheus
    metrics_dir: Path


def observe(
    cleanup: ExitStack,
    combination: dict,
    project: Path,
    workdir: Path,
    seconds: int = 30,
    **env: str,
) -> Observed:
    """The service of `combination` with production settings, its task worker if it
    has tasks, behind its Nginx and exporter, scraped by Prometheus with the
    service's own configuration: returned once Prometheus sees every target up
    (within `seconds`, which also bound the worker's start and stop). Everything
    stops when cleanup closes."""
    return observe_fleet(cleanup, combination, {project: workdir}, seconds, **env)[
        project
    ]


def observe_fleet(
    cleanup: ExitStack,
    combination: dict,
    fleet: dict[Path, Path],
    seconds: int = 30,
    **env: str,
) -> dict[Path, Observed]:
    """Each service of {project: workdir}, all generated with `combination`, as
    observe() runs it, all scraped by one Prometheus: returned once it sees every
    target of every service up."""
    started, targets = {}, {}
    for project, workdir in fleet.items():
        *started[project], targets[project] = scraped(
            cleanup, combination, project, workdir, seconds, **env
        )
    prometheus = Prometheus(targets)
    prometheus.start()
    cleanup.callback(prometheus.stop)
    for project, jobs in targets.items():
        up = f'sum(up{{service="{project.name}"}})'
        assert prometheus.wait_for(up, len(jobs), seconds) == len(jobs), (
            prometheus.targets()
        )
    return {
        project: Observed(app, nginx, prometheus, metrics_dir)
        for project, (app, nginx, metrics_dir) in started.items()
    }


def scraped(
    cleanup: ExitStack,
    combination: dict,
    project: Path,
    workdir: Path,
    seconds: int,
    **env: str,
) -> tuple[App, Nginx, Path, dict[str, list[str]]]:
    """The service started as observe() says: its app, Nginx, the app's metrics
    directory, and the targets Prometheus scrapes ({job: addresses})."""
    metrics_dir = workdir / "metrics"
    app, nginx = serve(
        cleanup,
        project,
        workdir,
        METRICS_DIR=str(metrics_dir),
        # Production settings; plain HTTP because no TLS proxy is in front. Its
        # clients, WebSockets' pages included, are on 127.0.0.1.
        DJANGO_DEBUG="false",
        DJANGO_SECURE_SSL_REDIRECT="false",
        DJANGO_ALLOWED_HOSTS="127.0.0.1",
        DJANGO_WEBSOCKET_ALLOWED_ORIGINS="127.0.0.1",
        **env,
    )
    targets = {"app": [f"127.0.0.1:{app.port}"]}
    if combination["tasks"] != "none":
        worker = Worker(app, workdir, seconds)
        worker.start()
        cleanup.callback(worker.stop)
        targets["worker"] = [f"127.0.0.1:{worker.port}"]
    exporter = NginxExporter(nginx, workdir)
    exporter.start()
    cleanup.callback(exporter.stop)
    targets["nginx"] = [f"127.0.0.1:{exporter.port}"]
    if combination["server"] == "granian":
        targets["granian"] = [f"127.0.0.1:{app.granian_metrics_port}"]
    return app, nginx, metrics_dir, targets
