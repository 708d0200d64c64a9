"""The Grafana dashboards of grafana/dashboards/, read as data: their panels, their
queries, and those queries as Prometheus runs them once Grafana's variables are
filled in. Used by the lint (test_grafana.py) and by the end-to-end test that runs
every panel's query against a real Prometheus (test_observability.py).
"""

import json
import re
from pathlib import Path

# How to tell a counter by its name: prometheus_client's counters end in _total, a
# histogram's series in _bucket, _count and _sum. Granian's exporter (2.8) and the
# Nginx exporter type these as counters without any suffix.
COUNTER_SUFFIXES = ("_total", "_bucket", "_count", "_sum")
UNSUFFIXED_COUNTERS = frozenset(
    {
        "granian_workers_spawns",
        "granian_workers_respawns_for_err",
        "granian_workers_respawns_for_lifetime",
        "granian_workers_respawns_for_rss",
        "granian_worker_lifetime",
        "granian_connections_handled",
        "granian_connections_err",
        "granian_requests_handled",
        "granian_static_requests_handled",
        "granian_static_requests_err",
        "granian_blocking_idle_cumulative",
        "granian_blocking_busy_cumulative",
        "granian_py_wait_cumulative",
        "nginx_connections_accepted",
        "nginx_connections_handled",
    }
)

# $name: the only variable syntax the dashboards use.
VARIABLE = re.compile(r"\$(\w+)")

# Dashboards of every service a Prometheus scrapes rather than of one: their `service`
# variable takes several values, and "All" by default, which Grafana sends as its
# allValue. They have no `instance` variable.
FLEET = frozenset({"fleet.json"})
ALL = ".*"


def is_counter(metric: str) -> bool:
    return metric.endswith(COUNTER_SUFFIXES) or metric in UNSUFFIXED_COUNTERS


def load(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def panels(dashboard: dict) -> list[dict]:
    """Every panel that shows data, those inside collapsed rows included."""
    every = []
    for panel in dashboard["panels"]:
        every.append(panel)
        every.extend(panel.get("panels", []))  # a collapsed row's panels
    return [panel for panel in every if panel["type"] not in ("row", "text")]


def queries(dashboard: dict) -> list[tuple[str, str]]:
    """(panel title, PromQL expression) for every target of every panel."""
    return [
        (panel["title"], target["expr"])
        for panel in panels(dashboard)
        for target in panel.get("targets", [])
    ]


def instant(expr: str, *, service: str, rate_interval: str) -> str:
    """The expression as Grafana sends it for one service and all its instances."""
    values = {"service": service, "instance": ".*", "__rate_interval": rate_interval}

    def value(match: re.Match) -> str:
        if match[1] not in values:
            raise ValueError(f"unknown variable ${match[1]} in {expr}")
        return values[match[1]]

    query = VARIABLE.sub(value, expr)
    if "$" in query:
        raise ValueError(f"a variable in an unsupported syntax in {expr}")
    return query


def panels_without_data(prometheus, paths, *, service: str, rate_interval: str) -> str:
    """The panels of the dashboards at `paths` whose queries a live Prometheus
    (monitoring.Prometheus) still answers with nothing: one "file: title (refId):
    query" line each, empty when every query of every panel has data. Fleet
    dashboards show all services."""
    # Each query of a panel on its own: a panel has data only if each has.
    pending = prometheus.queries_without_data(
        {
            f"{path.name}: {panel['title']} ({target['refId']})": instant(
                target["expr"],
                service=ALL if path.name in FLEET else service,
                rate_interval=rate_interval,
            )
            for path in paths
            for panel in panels(load(path))
            for target in panel.get("targets", [])
        }
    )
    return "\n".join(f"{panel}: {query}" for panel, query in pending.items())
