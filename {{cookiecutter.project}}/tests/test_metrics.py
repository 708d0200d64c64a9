"""Metrics: what each request, stream, query and cache lookup adds, and /metrics
adding up several worker processes, dead ones included."""

import asyncio
import gc
import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import django
import pytest
from django.conf import settings
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from config import template
from config.asgi import application
from core import collector, exposition, metrics, sampler
from items import store
from tests import tokens
from tests.asgi import next_chunk, open_stream

pytestmark = pytest.mark.django_db(transaction=True)

ITEM_ROUTE = "api/items/<item_id:item_id>"


def sample(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_requests_are_counted_by_route_method_and_status(async_client):
    before = sample(
        "django_http_requests_total", route=ITEM_ROUTE, method="GET", status="404"
    )
    observed = sample(
        "django_http_request_duration_seconds_count",
        route=ITEM_ROUTE,
        method="GET",
        status_class="4xx",
    )
    for item_id in (1, 2, 3):
        assert (await async_client.get(f"/api/items/{item_id}")).status_code == 404

    assert (
        sample(
            "django_http_requests_total", route=ITEM_ROUTE, method="GET", status="404"
        )
        == before + 3
    )
    assert (
        sample(
            "django_http_request_duration_seconds_count",
            route=ITEM_ROUTE,
            method="GET",
            status_class="4xx",
        )
        == observed + 3
    )
    assert sample("django_http_requests_in_flight") == 0


async def test_labels_stay_bounded(async_client):
    before = sample(
        "django_http_requests_total", route="<unmatched>", method="other", status="404"
    )
    await async_client.generic("BREW", "/no/such/path/12345")
    assert (
        sample(
            "django_http_requests_total",
            route="<unmatched>",
            method="other",
            status="404",
        )
        == before + 1
    )
    routes = {
        s.labels.get("route")
        for family in REGISTRY.collect()
        for s in family.samples
        if family.name == "django_http_requests"
    }
    assert "/no/such/path/12345" not in routes


async def test_unhandled_exceptions_are_counted_and_answered_500(monkeypatch):
    async def broken():
        raise RuntimeError("the store is broken")

    monkeypatch.setattr(store, "stats", broken)
    before = sample("django_http_exceptions_total", type="RuntimeError")
    client = tokens.async_client(raise_request_exception=False)
    response = await client.get("/api/items/stats")
    assert response.status_code == 500
    assert sample("django_http_exceptions_total", type="RuntimeError") == before + 1
    assert (
        sample(
            "django_http_requests_total",
            route="api/items/stats",
            method="GET",
            status="500",
        )
        >= 1
    )


async def test_requests_in_flight_while_a_view_runs(async_client, monkeypatch):
    entered, release = asyncio.Event(), asyncio.Event()

    async def slow():
        entered.set()
        await release.wait()
        return {"items": 0, "units": 0, "average_price": None, "categories": 0}

    monkeypatch.setattr(store, "stats", slow)
    request = asyncio.ensure_future(async_client.get("/api/items/stats"))
    await asyncio.wait_for(entered.wait(), 5)
    assert sample("django_http_requests_in_flight") == 1
    release.set()
    assert (await request).status_code == 200
    assert sample("django_http_requests_in_flight") == 0


async def test_event_streams_count_as_sse_connections_while_open():
    streams = sample("django_sse_streams_total")
    communicator, _ = await open_stream(application, "/api/items/events")
    await next_chunk(communicator)
    assert sample("django_connections_active", type="sse") == 1
    assert sample("django_connections_active", type="http") == 0
    assert sample("django_sse_streams_total") == streams + 1
    ended = sample("django_connection_duration_seconds_count", type="sse")

    await communicator.send_input({"type": "http.disconnect"})
    await communicator.wait(timeout=5)
    assert sample("django_connections_active", type="sse") == 0
    assert sample("django_connection_duration_seconds_count", type="sse") == ended + 1


async def test_queries_and_their_errors_are_counted(async_client):
    selects = sample(
        "django_db_query_duration_seconds_count", alias="default", operation="select"
    )
    errors = sample("django_db_errors_total", alias="default", type="IntegrityError")
    await async_client.post(
        "/api/categories", {"name": "tools"}, content_type="application/json"
    )
    response = await async_client.post(
        "/api/categories", {"name": "tools"}, content_type="application/json"
    )
    assert response.status_code == 409
    await async_client.get("/api/categories")

    assert (
        sample(
            "django_db_query_duration_seconds_count",
            alias="default",
            operation="select",
        )
        > selects
    )
    assert (
        sample("django_db_errors_total", alias="default", type="IntegrityError")
        == errors + 1
    )


async def test_item_reads_hit_the_cache_until_a_write(async_client, item_payload):
    item = (
        await async_client.post(
            "/api/items", item_payload, content_type="application/json"
        )
    ).json()
    hits, misses = (
        sample("django_cache_requests_total", result=result)
        for result in ("hit", "miss")
    )
    await async_client.get(f"/api/items/{item['id']}")
    await async_client.get(f"/api/items/{item['id']}")
    assert sample("django_cache_requests_total", result="miss") == misses + 1
    assert sample("django_cache_requests_total", result="hit") == hits + 1

    await async_client.patch(
        f"/api/items/{item['id']}", {"quantity": 9}, content_type="application/json"
    )
    response = await async_client.get(f"/api/items/{item['id']}")
    assert response.json()["quantity"] == 9
    assert sample("django_cache_requests_total", result="miss") == misses + 2


def test_build_info_names_the_build_and_the_template_it_came_from():
    metrics.worker_started()
    try:
        assert (
            sample(
                "django_build_info",
                version=settings.SERVICE_VERSION,
                server=settings.SERVER,
                django=django.get_version(),
                python=platform.python_version(),
                template_version=template.VERSION,
                template_date=template.DATE,
            )
            == 1
        )
        assert sample("django_template_commit_timestamp_seconds") == template.TIMESTAMP
    finally:
        metrics.worker_stopped()


def test_the_template_date_is_a_utc_time_or_unknown():
    if template.DATE == "unknown":
        assert template.TIMESTAMP == 0
    else:
        date = datetime.strptime(template.DATE, "%Y-%m-%dT%H:%M:%SZ").replace(
            tzinfo=UTC
        )
        assert date.timestamp() == template.TIMESTAMP
    assert template.VERSION


async def test_sampler_measures_loop_lag_cpu_memory_and_gc_pauses(monkeypatch):
    monkeypatch.setattr(sampler, "INTERVAL_SECONDS", 0.01)
    lags = sample("django_event_loop_lag_seconds_count")
    full = "django_worker_gc_pause_seconds_count"
    collector.record()  # those of collections before this test's
    collections = sample(full, generation="2")
    gc.callbacks.append(collector._timed)  # as core.collector.configure() does
    gc.disable()  # one full collection: the test's own
    try:
        gc.collect()
        task = asyncio.ensure_future(sampler.run())
        await asyncio.sleep(0.1)
        task.cancel()
    finally:
        gc.enable()
        gc.callbacks.remove(collector._timed)
    assert sample("django_event_loop_lag_seconds_count") > lags
    assert sample("django_process_resident_memory_bytes") > 10 * 2**20
    assert sample(full, generation="2") == collections + 1


async def test_metrics_endpoint_serves_the_text_format(async_client):
    await async_client.get("/healthz")
    response = await async_client.get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")
    names = {f.name for f in text_string_to_metric_families(response.text)}
    assert {"django_http_requests", "django_connections_active"} <= names


@pytest.mark.parametrize("path", ["/metrics", "/healthz", "/readyz"])
async def test_scrapes_and_probes_are_not_redirected_to_https(
    async_client, settings, path
):
    settings.SECURE_SSL_REDIRECT = True
    assert (await async_client.get("/api/items")).status_code == 301
    assert (await async_client.get(path)).status_code == 200


# A worker of a multi-process server: counts what it is told, then waits for a
# line on stdin before it exits, so that the test decides when it dies.
WORKER = """
import sys
import django
django.setup()
from core import metrics
metrics.HTTP_REQUESTS.labels("healthz", "GET", "200").inc(int(sys.argv[1]))
metrics.HTTP_IN_FLIGHT.inc()
print("counted", flush=True)
sys.stdin.readline()
"""


def start_worker(
    directory: Path, requests: int, script: str = WORKER
) -> subprocess.Popen:
    worker = subprocess.Popen(  # noqa: S603  (this interpreter, our own script)
        [sys.executable, "-c", script, str(requests)],
        cwd=settings.BASE_DIR,
        env={
            **os.environ,
            "PROMETHEUS_MULTIPROC_DIR": str(directory),
            "DJANGO_SETTINGS_MODULE": "tests.settings",
        },
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert worker.stdout.readline() == "counted\n"
    return worker


def stop(worker: subprocess.Popen) -> None:
    worker.communicate("\n", timeout=30)


def scrape(directory: Path) -> dict:
    text = exposition.render(str(directory)).decode()
    return {
        (s.name, s.labels.get("route")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_a_started_worker_exposes_its_recycles_and_gc_pauses_at_zero(tmp_path):
    """Before either happens: dashboards and rules then see a series from the
    start, and a recycle or a pause as an increase."""
    started = WORKER.replace(
        'metrics.HTTP_REQUESTS.labels("healthz", "GET", "200").inc(int(sys.argv[1]))',
        "metrics.worker_started()",
    )
    worker = start_worker(tmp_path, 0, started)
    try:
        text = exposition.render(str(tmp_path)).decode()
    finally:
        stop(worker)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    for reason in ("requests", "memory"):
        assert samples[("django_worker_recycles_total", (("reason", reason),))] == 0
    for generation in ("0", "1", "2"):
        count = ("django_worker_gc_pause_seconds_count", (("generation", generation),))
        assert samples[count] == 0


def test_workers_add_up_and_dead_workers_neither_linger_nor_subtract(tmp_path):
    requests = ("django_http_requests_total", "healthz")
    in_flight = ("django_http_requests_in_flight", None)
    first = start_worker(tmp_path, 3)
    second = start_worker(tmp_path, 4)
    assert scrape(tmp_path)[requests] == 7
    assert scrape(tmp_path)[in_flight] == 2

    stop(first)  # recycled: its requests stay counted, its gauges go
    metrics = scrape(tmp_path)
    assert metrics[requests] == 7
    assert metrics[in_flight] == 1
    assert not list(tmp_path.glob(f"*_{first.pid}.db"))
    assert (tmp_path / "counter_archive.db").exists()

    third = start_worker(tmp_path, 5)
    stop(second)
    stop(third)
    metrics = scrape(tmp_path)
    assert metrics[requests] == 12
    assert metrics.get(in_flight, 0) == 0
    assert scrape(tmp_path)[requests] == 12  # archived once, not twice
    assert all(p.name.endswith("_archive.db") for p in tmp_path.glob("*.db"))


def test_a_file_not_sized_yet_fails_no_scrape(tmp_path):
    """prometheus_client creates a process's file empty and then sizes it: a
    scrape in between reads nothing from it and still answers with every other
    worker's metrics; the empty file of a process that died in between is
    retired (core.exposition)."""
    requests = ("django_http_requests_total", "healthz")
    worker = start_worker(tmp_path, 3)
    dead = subprocess.Popen(["true"])  # noqa: S607  (a pid that has exited)
    dead.wait()
    # A kind neither process has written yet.
    for pid in (worker.pid, dead.pid):
        (tmp_path / f"summary_{pid}.db").touch()
    try:
        assert scrape(tmp_path)[requests] == 3
    finally:
        stop(worker)
    assert not (tmp_path / f"summary_{dead.pid}.db").exists()
    assert scrape(tmp_path)[requests] == 3
