"""The end-to-end proof of the task metrics: for each queue library, the service
behind Nginx, its worker (bin/worker) on a real PostgreSQL and broker, scraped by
a real Prometheus with the service's own configuration, rules and dashboards.

Known work goes in: item writes (the item_changed signal enqueues record_change)
and reports (the view enqueues build_report), one of them for a category that does
not exist, retried until its retries are spent. Prometheus must then count exactly
that: every task enqueued finished once, as a success or a failure, with the
retries in between; the queue is empty again, the worker is up, every panel of
the tasks dashboard has data and every rule evaluates.
"""

import json
import time
from collections import Counter
from contextlib import ExitStack

import pytest

import dashboards
from edge import Nginx, request
from matrix import each_queue, params
from monitoring import SERVICE, Prometheus, failing, observe
from services import create_database

COMBINATIONS = params(each_queue())
RECORD_CHANGE, BUILD_REPORT = "items.record_change", "items.build_report"
# build_report's retries (items/tasks.py): a report that cannot be built is
# attempted this many more times before it fails.
REPORT_RETRIES = 2
RATE_INTERVAL = "1m"
# Seconds the stack gets to do what the test waits for.
WAIT = 30


def send(nginx: Nginx, method: str, path: str, body=None) -> tuple[int, dict]:
    response, content = request(nginx, method, path, body)
    return response.status, json.loads(content) if content else {}


def drive_tasks(nginx: Nginx) -> Counter:
    """Item writes and reports through Nginx, until the worker finished every
    report; returns the tasks enqueued, by name."""
    enqueued = Counter()
    item = {"name": "widget", "category": "tools", "price": "2.50", "quantity": 2}
    ids = []
    for number in range(3):
        status, created = send(
            nginx, "POST", "/api/items", {**item, "name": f"w{number}"}
        )
        assert status == 201, created
        ids.append(created["id"])
    assert send(nginx, "PATCH", f"/api/items/{ids[0]}", {"quantity": 5})[0] == 200
    assert send(nginx, "DELETE", f"/api/items/{ids[1]}")[0] == 204
    enqueued[RECORD_CHANGE] += 5
    reports = {}
    for body, outcome in (({}, "done"), ({"category": "tools"}, "done")):
        status, report = send(nginx, "POST", "/api/reports", body)
        assert status == 202, report
        reports[report["id"]] = outcome
    status, report = send(nginx, "POST", "/api/reports", {"category": "nowhere"})
    assert status == 202, report
    reports[report["id"]] = "failed"
    enqueued[BUILD_REPORT] += len(reports)
    deadline = time.monotonic() + WAIT
    finished = {}
    while len(finished) < len(reports):
        assert time.monotonic() < deadline, f"reports not finished: {finished}"
        for report_id in set(reports) - set(finished):
            report = send(nginx, "GET", f"/api/reports/{report_id}")[1]
            if report["status"] in ("done", "failed"):
                finished[report_id] = report["status"]
        time.sleep(0.2)
    assert finished == reports
    return enqueued


# Module scope: a stack stops once its tests have run, instead of serving and
# scraping until the session ends (eleven at once slowed the whole suite).
@pytest.fixture(scope="module")
def observed(generated, postgres_url, redis_database, tmp_path_factory):
    """Per queue library: the stack, the tasks sent to it, and its Prometheus."""
    runs = {}
    with ExitStack() as cleanup:

        def run(combination: dict) -> dict:
            queue = combination["tasks"]
            if queue in runs:
                return runs[queue]
            project = generated(combination)
            workdir = tmp_path_factory.mktemp(f"tasks-observed-{queue}")
            # Tasks services run on PostgreSQL: the worker, another process, reads
            # the app's database.
            database = f"obs_tasks_{queue.replace('-', '_')}"
            stack = observe(
                cleanup,
                combination,
                project,
                workdir,
                seconds=WAIT,
                REDIS_URL=redis_database(),
                DATABASE_URL=create_database(postgres_url, database),
                TASK_RETRY_DELAY="0.2",
            )
            runs[queue] = {
                "project": project,
                "prometheus": stack.prometheus,
                "enqueued": drive_tasks(stack.nginx),
            }
            return runs[queue]

        yield run


def by_task(prometheus: Prometheus, metric: str) -> Counter:
    """The metric's totals across every process, by task."""
    result = prometheus.query(f'sum by (task) ({metric}{{service="{SERVICE}"}})')
    return Counter(
        {sample["metric"]["task"]: int(float(sample["value"][1])) for sample in result}
    )


@pytest.mark.parametrize("combination", COMBINATIONS)
def test_every_task_enqueued_finishes_once_with_its_retries(combination, observed):
    run = observed(combination)
    prometheus, enqueued = run["prometheus"], run["enqueued"]
    finished = (
        f'sum(django_tasks_succeeded_total{{service="{SERVICE}"}})'
        f' + sum(django_tasks_failed_total{{service="{SERVICE}"}})'
    )
    prometheus.wait_for(finished, enqueued.total(), WAIT)
    counts = {
        kind: by_task(prometheus, f"django_tasks_{kind}_total")
        for kind in ("enqueued", "started", "succeeded", "retried", "failed")
    }
    assert counts["enqueued"] == enqueued
    assert counts["succeeded"] + counts["failed"] == enqueued
    assert counts["failed"] == {BUILD_REPORT: 1}
    assert counts["retried"] == {BUILD_REPORT: REPORT_RETRIES}
    assert (
        counts["started"] == counts["succeeded"] + counts["retried"] + counts["failed"]
    )
    failures = prometheus.query(
        f'sum by (task, type) (django_tasks_failed_total{{service="{SERVICE}"}})'
    )
    assert [sample["metric"]["type"] for sample in failures] == ["LookupError"]


@pytest.mark.parametrize("combination", COMBINATIONS)
def test_the_queue_empties_and_the_worker_is_up(combination, observed):
    prometheus = observed(combination)["prometheus"]
    depth = f'max(django_task_queue_depth{{service="{SERVICE}"}})'
    assert prometheus.wait_for(depth, 0, WAIT) == 0
    running = f'sum(django_tasks_running{{service="{SERVICE}"}})'
    assert prometheus.wait_for(running, 0, WAIT) == 0
    assert prometheus.value(f'up{{service="{SERVICE}",job=~".*worker"}}') == 1


@pytest.mark.parametrize("combination", COMBINATIONS)
def test_every_tasks_and_database_dashboard_panel_returns_data(combination, observed):
    # These stacks run on PostgreSQL: the database dashboard's pools are there.
    run = observed(combination)
    paths = [
        run["project"] / "deploy" / "grafana" / "dashboards" / f"{name}.json"
        for name in ("tasks", "database")
    ]
    missing = dashboards.panels_without_data(
        run["prometheus"], paths, service=SERVICE, rate_interval=RATE_INTERVAL
    )
    assert not missing, f"panels without data:\n{missing}"


@pytest.mark.parametrize("combination", COMBINATIONS)
def test_every_rule_evaluates_without_error(combination, observed):
    rules = observed(combination)["prometheus"].evaluated_rules()
    assert {"TaskFailureRatioHigh", "TaskWorkersDown"} <= {r["name"] for r in rules}
    assert not failing(rules), failing(rules)
