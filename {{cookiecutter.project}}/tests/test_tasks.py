"""Background tasks, run by the real worker (bin/worker) on the real broker.

The worker is another process, as in production: it reads the test database and
the broker this process enqueues into. No eager mode: what these tests see is
what the worker did. They need a database server (DATABASE_URL){% if cookiecutter.__task_broker == "redis" %} and Redis (REDIS_URL){% endif %}.
"""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from io import StringIO
from pathlib import Path
{%- if cookiecutter.tasks == "django" %}
from types import SimpleNamespace
{%- endif %}
from urllib.parse import quote

{% if cookiecutter.tasks == "dramatiq" -%}
import dramatiq
{% endif -%}
import pytest
{%- if cookiecutter.tasks == "arq" %}
from arq.constants import job_key_prefix
{%- endif %}
from asgiref.sync import async_to_sync, sync_to_async
from django.conf import settings
from django.core.management import CommandError, call_command
from django.db import {% if cookiecutter.tasks in ("django", "django-q2") %}OperationalError, {% endif %}connection, connections
from django.utils import timezone
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from config.asgi import application
from core import outbox, queue, queueing, tasks
from core.database import close_databases
from core.models import PendingTask, TaskDelivery
from items.models import Item, ItemChange
from items.tasks import build_report, record_change
from tests.asgi import exchange
from tests.processes import free_port, killed_on_failure, terminate

pytestmark = pytest.mark.django_db(transaction=True)

BASE_DIR = Path(__file__).resolve().parent.parent
JSON = "application/json"
# Seconds the worker gets to do what a test waits for.
WAIT = 30


# The URL scheme and default port of each database server the worker can use.
SERVERS = {"postgresql": ("postgres", 5432), "mysql": ("mysql", 3306)}


def worker_database_url() -> str:
    db = connection.settings_dict
    if connection.vendor not in SERVERS:
        pytest.fail(
            "the task tests need a database server (DATABASE_URL): the worker is "
            "another process, and it must open the test database"
        )
    scheme, port = SERVERS[connection.vendor]
    credentials = quote(db["USER"] or "", safe="")
    if db["PASSWORD"]:
        credentials += ":" + quote(db["PASSWORD"], safe="")
    return (
        f"{scheme}://{credentials}@{db['HOST'] or 'localhost'}:{db['PORT'] or port}"
        f"/{db['NAME']}"
    )


def run_web_process(script: str, *args: str, check: bool = True, **env: str):
    """Runs `script` (Python) in a process of its own with the service's test
    settings on the test database, as another web process; `env` adds to its
    environment. Returns the finished process (subprocess.CompletedProcess)."""
    return subprocess.run(  # noqa: S603  (this interpreter, our own scripts)
        [sys.executable, "-c", script, *args],
        cwd=BASE_DIR,
        env={
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "DATABASE_URL": worker_database_url(),
            **env,
        },
        capture_output=True,
        text=True,
        check=check,
    )


class Worker:
    def __init__(self, process: subprocess.Popen, port: int):
        self.process = process
        self.port = port

    def get(self, path: str) -> tuple[int, bytes]:
        url = f"http://127.0.0.1:{self.port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def samples(self) -> dict:
        """The worker's metrics: {(name, sorted labels): value}."""
        status, body = self.get("/metrics")
        assert status == 200
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(body.decode())
            for sample in family.samples
        }


def start_worker(
    database_url: str, metrics_dir: Path, output=None, **environ: str
) -> Worker:
    """bin/worker on the test database, once it answers /healthz; `environ` adds
    to or overrides its environment, `output` (a file) takes what it writes."""
    {%- if cookiecutter.__task_broker == "redis" %}
    if not settings.REDIS_URL:
        pytest.fail("the task tests need Redis (REDIS_URL): it is the broker")
    {%- endif %}
    port = free_port()
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": database_url,
        "WORKER_METRICS_PORT": str(port),
        "METRICS_DIR": str(metrics_dir),
        "WORKER_SHUTDOWN_TIMEOUT": str(WAIT),
        "OUTBOX_RELAY_SECONDS": "0.5",
        **environ,
    }
    process = subprocess.Popen(  # noqa: S603
        [BASE_DIR / "bin" / "worker"],
        env=env,
        stdout=output,
        stderr=None if output is None else subprocess.STDOUT,
        start_new_session=True,  # tests.processes
    )
    worker = Worker(process, port)
    deadline = time.monotonic() + WAIT
    with killed_on_failure(process):
        while True:
            assert process.poll() is None, (
                f"bin/worker exited with {process.returncode}"
            )
            try:
                if worker.get("/healthz")[0] == 200:
                    return worker
            except OSError:
                pass
            assert time.monotonic() < deadline, "bin/worker never answered /healthz"
            time.sleep(0.1)


def stop_worker(worker: Worker) -> None:
    """Stopped as systemd and the kubelet stop it, it exits 0 within its
    shutdown timeout."""
    assert terminate(worker.process, timeout=WAIT + 10) == 0


@pytest.fixture(scope="module")
def worker(django_db_setup, django_db_blocker, tmp_path_factory):
    with django_db_blocker.unblock():
        database_url = worker_database_url()
    worker = start_worker(database_url, tmp_path_factory.mktemp("worker-metrics"))
    yield worker
    stop_worker(worker)
    # The test database is dropped next, and not while a session is open on it:
    # the async ORM calls of the tests held theirs in asgiref's sync thread.
    with django_db_blocker.unblock():
        asyncio.run(sync_to_async(connections.close_all)())
        close_databases()


async def eventually(check, seconds: float = WAIT):
    """The first true result of `await check()`, tried until `seconds` pass."""
    deadline = time.monotonic() + seconds
    while not (result := await check()):
        assert time.monotonic() < deadline, f"not done after {seconds} s"
        await asyncio.sleep(0.1)
    return result


async def create_item(client, payload) -> dict:
    response = await client.post("/api/items", payload, content_type=JSON)
    assert response.status_code == 201, response.content
    return response.json()


async def request_report(client, body: dict) -> dict:
    response = await client.post("/api/reports", body, content_type=JSON)
    assert response.status_code == 202, response.content
    report = response.json()
    assert response["Location"] == f"/api/reports/{report['id']}"
    assert report["status"] == "queued"
    return report


async def finished_report(client, report_id: int) -> dict:
    async def check():
        response = await client.get(f"/api/reports/{report_id}")
        assert response.status_code == 200
        report = response.json()
        return report if report["status"] in ("done", "failed") else None

    return await eventually(check)


async def test_item_changes_are_recorded_by_the_worker(
    worker, async_client, item_payload
):
    item = await create_item(async_client, item_payload)
    path = f"/api/items/{item['id']}"
    response = await async_client.patch(path, {"quantity": 1}, content_type=JSON)
    assert response.status_code == 200
    assert (await async_client.delete(path)).status_code == 204

    def recorded():
        # In a thread that closes its connection: the test database is dropped
        # at the end while no session is open on it.
        try:
            changes = ItemChange.objects.filter(item_id=item["id"])
            events = sorted(changes.values_list("event", flat=True))
        finally:
            connection.close()
        return events if len(events) == 3 else None

    events = await eventually(lambda: asyncio.to_thread(recorded))
    assert events == ["item.created", "item.deleted", "item.updated"]


async def test_a_report_is_built_by_the_worker(worker, async_client, item_payload):
    await create_item(async_client, {**item_payload, "quantity": 3})
    await create_item(async_client, {**item_payload, "quantity": 2, "price": "1.00"})
    await create_item(async_client, {**item_payload, "category": "other"})
    report = await request_report(async_client, {"category": "tools"})
    report = await finished_report(async_client, report["id"])
    assert report["status"] == "done", report
    assert report["attempts"] == 1
    assert report["result"] == {"items": 2, "units": 5, "value": "39.50"}
    assert report["error"] is None


async def test_a_report_delivered_again_is_not_built_again(worker, async_client):
    def succeeded() -> float:
        task = (("task", build_report.name),)
        return worker.samples().get(("django_tasks_succeeded_total", task), 0)

    report = await request_report(async_client, {})
    built = await finished_report(async_client, report["id"])
    before = await asyncio.to_thread(succeeded)
    await build_report.enqueue(report["id"])  # as after a worker killed mid-task
    await eventually(lambda: asyncio.to_thread(lambda: succeeded() > before or None))
    again = await async_client.get(f"/api/reports/{report['id']}")
    assert again.json() == built


async def test_a_failing_task_is_retried_then_reported_failed(worker, async_client):
    def counts() -> dict:
        samples = worker.samples()
        task = (("task", "items.build_report"),)
        return {
            kind: samples.get((f"django_tasks_{kind}_total", task), 0)
            for kind in ("started", "retried", "succeeded")
        } | {
            "failed": samples.get(
                (
                    "django_tasks_failed_total",
                    (("task", "items.build_report"), ("type", "LookupError")),
                ),
                0,
            )
        }

    before = counts()
    report = await request_report(async_client, {"category": "nowhere"})
    report = await finished_report(async_client, report["id"])
    attempts = build_report.retries + 1
    assert report["status"] == "failed", report
    assert report["attempts"] == attempts
    assert report["error"] == "category 'nowhere' does not exist"

    def failure_counted():
        now = counts()
        return now if now["failed"] > before["failed"] else None

    after = await eventually(lambda: asyncio.to_thread(failure_counted))
    assert {kind: after[kind] - before[kind] for kind in after} == {
        "started": attempts,
        "retried": attempts - 1,
        "succeeded": 0,
        "failed": 1,
    }


async def test_the_web_process_counts_what_it_enqueues(worker, async_client):
    def enqueued() -> float:
        labels = {"task": "items.build_report"}
        return REGISTRY.get_sample_value("django_tasks_enqueued_total", labels) or 0

    before = enqueued()
    report = await request_report(async_client, {})
    assert enqueued() == before + 1
    assert (await finished_report(async_client, report["id"]))["status"] == "done"


async def test_a_change_the_broker_refused_is_relayed_and_recorded_once(
    worker, async_client, item_payload, monkeypatch
):
    item = await create_item(async_client, item_payload)

    async def refused(task, *args):
        raise ConnectionRefusedError("the broker is down")

    with monkeypatch.context() as broker_down:
        # On the adapter's Task class: some libraries' task objects are frozen.
        broker_down.setattr(type(record_change), "enqueue", refused)
        path = f"/api/items/{item['id']}"
        response = await async_client.patch(path, {"quantity": 7}, content_type=JSON)
        assert response.status_code == 200
    # The worker's relay sends what the request could not.

    def recorded():
        try:
            changes = ItemChange.objects.filter(
                item_id=item["id"], event="item.updated"
            )
            found = list(changes.values_list("change_id", flat=True))
            pending = PendingTask.objects.count()
        finally:
            connection.close()
        return found if found and not pending else None

    (change_id,) = await eventually(lambda: asyncio.to_thread(recorded))
    assert change_id is not None


# A web process killed between a write's commit and the send of its task, as an
# OOM kill would do: the broker's enqueue kills it. The POST has an
# Idempotency-Key, which the client sends again once its connection is cut.
KILLED_AFTER_COMMIT = """
import asyncio, os, signal, sys
import django

django.setup()
from config.asgi import application
from items.tasks import record_change
from tests.asgi import exchange


async def killed(task, *args):
    os.kill(os.getpid(), signal.SIGKILL)


type(record_change).enqueue = killed
asyncio.run(exchange(application, "POST", "/api/items", sys.argv[1].encode(), [
    (b"content-type", b"application/json"), (b"idempotency-key", b"killed-1")]))
"""


async def test_a_write_whose_process_died_before_sending_its_task_gets_it(
    worker, item_payload
):
    """The task commits with the write (core.outbox): the relay sends it once the
    writer's HANDOFF has passed, and the client's retry is answered the first
    answer, so that the acknowledged write has its task, once."""
    died = await asyncio.to_thread(
        run_web_process, KILLED_AFTER_COMMIT, json.dumps(item_payload), check=False
    )
    assert died.returncode == -signal.SIGKILL, died.stdout + died.stderr
    (item_id,) = [pk async for pk in Item.objects.values_list("pk", flat=True)]
    (kept,) = [row async for row in PendingTask.objects.all()]
    assert (kept.task, kept.args[:2]) == (record_change.name, [item_id, "item.created"])
    # Left to the process that wrote it, for now: the relay does not send it too.
    assert kept.claimed_until > timezone.now() + outbox.HANDOFF / 2

    start, body = await exchange(
        application,
        "POST",
        "/api/items",
        json.dumps(item_payload).encode(),
        [(b"content-type", b"application/json"), (b"idempotency-key", b"killed-1")],
    )
    assert (start["status"], json.loads(body)["id"]) == (201, item_id)
    assert dict(start["headers"])[b"Idempotent-Replayed"] == b"true"

    # The HANDOFF passes (sooner than the test should wait): the worker's relay
    # sends the task, and the change is recorded, once.
    await PendingTask.objects.filter(pk=kept.pk).aupdate(claimed_until=timezone.now())

    def recorded():
        try:
            changes = ItemChange.objects.filter(item_id=item_id, event="item.created")
            found = list(changes.values_list("change_id", flat=True))
            pending = PendingTask.objects.count()
        finally:
            connection.close()
        return found if found and not pending else None

    recorded_once = [uuid.UUID(kept.args[2])]
    assert await eventually(lambda: asyncio.to_thread(recorded)) == recorded_once
    assert await Item.objects.acount() == 1


async def test_a_change_delivered_twice_is_recorded_once(worker, item_payload):
    def succeeded() -> float:
        task = (("task", "items.record_change"),)
        return worker.samples().get(("django_tasks_succeeded_total", task), 0)

    before = await asyncio.to_thread(succeeded)
    change_id = str(uuid.uuid4())
    for _ in range(2):  # a redelivery, as after a worker killed mid-task
        await record_change.enqueue(424242, "item.updated", change_id)
    await eventually(
        lambda: asyncio.to_thread(lambda: succeeded() >= before + 2 or None)
    )

    def rows() -> int:
        try:
            return ItemChange.objects.filter(change_id=change_id).count()
        finally:
            connection.close()

    assert await asyncio.to_thread(rows) == 1


def change_rows(change_id: str) -> int:
    try:
        return ItemChange.objects.filter(change_id=change_id).count()
    finally:
        connection.close()


def delivery(job: str) -> TaskDelivery | None:
    try:
        return TaskDelivery.objects.filter(job=job).first()
    finally:
        connection.close()


def dead_letters(worker: Worker) -> float | None:
    """What the worker reports dead-lettered of record_change."""
    labels = (("task", "items.record_change"),)
    return worker.samples().get(("django_task_dead_letters", labels))


def lock_item_changes():
    """Another session that holds the change table against writes: record_change's
    insert waits for it, mid-task, until the session is closed."""
    if connection.vendor == "mysql":
        import MySQLdb

        session = MySQLdb.connect(**connection.get_connection_params())
        session.cursor().execute("LOCK TABLES items_itemchange WRITE")
        return session
    import psycopg

    session = psycopg.connect(worker_database_url())
    session.execute("LOCK TABLE items_itemchange IN EXCLUSIVE MODE")
    return session


async def kill_delivery(job: str, number: int) -> None:
    """SIGKILLs the worker process that runs delivery `number` of `job`, mid-task:
    the row is written as the delivery starts, and its insert then waits."""

    async def started():
        row = await asyncio.to_thread(delivery, job)
        return row if row and row.deliveries == number else None

    row = await eventually(started)
    os.kill(int(row.worker.rsplit(":", 1)[1]), signal.SIGKILL)


async def dead_letters_command(*args) -> str:
    output = StringIO()
    await sync_to_async(call_command)("dead_letters", *args, stdout=output)
    return output.getvalue()


async def test_a_delivery_after_one_that_never_finished_runs_and_is_cleared():
    """The row of a delivery whose worker died counts: the next runs the task, and
    its row goes once the attempt has ended."""
    job = f"test-{uuid.uuid4().hex}"
    await TaskDelivery.objects.acreate(
        job=job, task="t", args=[], started_at=timezone.now(), worker="gone:1"
    )

    async def body():
        return (await TaskDelivery.objects.aget(job=job)).deliveries

    decision = await tasks.attempt(
        "t", body, (), number=1, attempts=1, time_limit=5, job=job
    )
    assert decision == tasks.Succeeded(2)
    assert not await TaskDelivery.objects.filter(job=job).aexists()


async def test_a_task_whose_worker_died_at_each_delivery_is_dead_lettered(
    worker, item_payload
):
    """A job delivered TASK_MAX_DELIVERIES times whose worker died each time (each
    left its row): the next delivery does not run it but dead-letters it, counted
    and listed; retried, it runs once."""
    change_id, job = str(uuid.uuid4()), f"test-{uuid.uuid4().hex}"
    args = (424243, "item.updated", change_id)
    await TaskDelivery.objects.acreate(
        job=job,
        task=record_change.name,
        args=list(args),
        deliveries=settings.TASK_MAX_DELIVERIES,
        started_at=timezone.now(),
        worker="gone:1",
    )

    def dead_lettered() -> float:
        labels = {"task": record_change.name}
        total = REGISTRY.get_sample_value("django_tasks_dead_lettered_total", labels)
        return total or 0

    before, ran = dead_lettered(), []

    async def body(*args):
        ran.append(args)

    async def deliver() -> tasks.DeadLettered:
        return await tasks.attempt(
            record_change.name, body, args, number=1, attempts=4, time_limit=5, job=job
        )

    assert await deliver() == tasks.DeadLettered(settings.TASK_MAX_DELIVERIES + 1)
    row = await TaskDelivery.objects.aget(job=job)
    assert row.dead_lettered_at is not None
    # Delivered once more (its worker died before the library dropped it): not
    # run either, and counted once.
    assert await deliver() == tasks.DeadLettered(settings.TASK_MAX_DELIVERIES + 2)
    assert ran == []
    assert dead_lettered() == before + 1
    assert await asyncio.to_thread(dead_letters, worker) == 1
    listed = await dead_letters_command()
    assert f"{job}  {record_change.name}{json.dumps(list(args))}" in listed
    assert f"deliveries={settings.TASK_MAX_DELIVERIES + 2}" in listed

    with pytest.raises(CommandError, match="no dead-lettered task has the job id x"):
        await dead_letters_command("--retry", job, "x")
    assert "1 dead-lettered task(s) queued" in await dead_letters_command(
        "--retry", job
    )
    # The worker's relay sends it; it runs as a new job.
    await eventually(lambda: asyncio.to_thread(change_rows, change_id))
    assert await asyncio.to_thread(change_rows, change_id) == 1
    assert await asyncio.to_thread(delivery, job) is None
    assert await asyncio.to_thread(dead_letters, worker) == 0
    assert await dead_letters_command() == ""
{%- if cookiecutter.tasks == "celery" %}


async def test_celery_runs_a_task_whose_worker_process_was_killed_again_once(worker):
    """One of Celery's prefork processes killed mid-task (as the OOM killer does):
    the task goes back to the queue at once (reject_on_worker_lost) and its effect
    is recorded once."""
    change_id = str(uuid.uuid4())
    lock = await asyncio.to_thread(lock_item_changes)
    try:
        job = await record_change.enqueue(424244, "item.updated", change_id)
        await kill_delivery(job, 1)

        async def delivered_again():
            row = await asyncio.to_thread(delivery, job)
            return row and row.deliveries == 2

        await eventually(delivered_again)
    finally:
        lock.close()
    await eventually(lambda: asyncio.to_thread(change_rows, change_id))
    await eventually(lambda: asyncio.to_thread(lambda: delivery(job) is None))
    assert await asyncio.to_thread(change_rows, change_id) == 1


async def test_celery_dead_letters_a_task_that_kills_its_worker_every_time(worker):
    change_id = str(uuid.uuid4())
    lock = await asyncio.to_thread(lock_item_changes)
    try:
        job = await record_change.enqueue(424245, "item.updated", change_id)
        for number in range(1, settings.TASK_MAX_DELIVERIES + 1):
            await kill_delivery(job, number)

        async def dead_lettered():
            row = await asyncio.to_thread(delivery, job)
            return row and row.dead_lettered_at

        await eventually(dead_lettered)
    finally:
        lock.close()
    assert await asyncio.to_thread(change_rows, change_id) == 0
    row = await asyncio.to_thread(delivery, job)
    assert row.deliveries == settings.TASK_MAX_DELIVERIES + 1
    assert await asyncio.to_thread(dead_letters, worker) == 1
    assert "1 dead-lettered task(s) dropped" in await dead_letters_command(
        "--drop", "all"
    )
    assert await asyncio.to_thread(delivery, job) is None


def test_celery_hands_a_dead_workers_task_out_again_after_its_limits_not_an_hour(
    monkeypatch,
):
    """kombu's Redis transport hands an unacknowledged task out again after its
    visibility timeout, an hour unless set: bin/worker's worker sets it from the
    declared tasks' limits (queue.redelivery_after), above the longest a task's
    message may stay unacknowledged while its worker lives."""
    started = []
    # bin/worker's environment.
    monkeypatch.setenv("WORKER_CONCURRENCY", "2")
    monkeypatch.setattr(queue.app, "start", lambda argv: started.append(argv) or 0)
    options = dict(queue.app.conf.broker_transport_options)
    monkeypatch.setitem(queue.app.conf, "broker_transport_options", options)
    assert queue.main() == 0
    assert started, "the worker was not started"
    timeout = queue.app.conf.broker_transport_options["visibility_timeout"]
    ours = [t for name, t in queue.app.tasks.items() if not name.startswith("celery.")]
    assert {record_change.name, build_report.name} <= {t.name for t in ours}
    longest = max(t.time_limit + tasks.retry_delay(max(t.max_retries, 1)) for t in ours)
    assert timeout == queue.redelivery_after() == longest
    assert timeout < 3600
{%- endif %}


def test_the_worker_reports_its_queue_depth_and_health(worker):
    depth = ("django_task_queue_depth", (("queue", settings.TASK_QUEUE),))
    deadline = time.monotonic() + WAIT
    while worker.samples().get(depth) != 0:
        assert time.monotonic() < deadline, worker.samples().get(depth)
        time.sleep(0.2)
    assert worker.get("/healthz") == (200, b'{"status": "ok"}')
    assert worker.get("/nothing-here")[0] == 404


def test_a_worker_that_ends_unasked_fails_so_that_it_is_restarted(
    django_db_blocker, tmp_path
):
    """The library's worker ended while nobody stopped bin/worker (here by a
    SIGTERM of its own, which the library takes for a clean stop and ends with 0):
    bin/worker exits 1, so that systemd's Restart=on-failure starts it again."""
    with django_db_blocker.unblock():
        database_url = worker_database_url()
    worker = start_worker(database_url, tmp_path / "metrics")
    # Killed if this test fails: left running, it would take the next tests'
    # tasks from the queue it shares with them.
    with killed_on_failure(worker.process):
        # Once this worker (not the module's, on the same queue) has run a task,
        # its library has its signal handlers.
        succeeded = ("django_tasks_succeeded_total", (("task", record_change.name),))
        deadline = time.monotonic() + WAIT
        while not worker.samples().get(succeeded):
            assert time.monotonic() < deadline, "the worker ran no task"
            async_to_sync(record_change.enqueue)(
                424247, "item.updated", str(uuid.uuid4())
            )
            time.sleep(0.2)
        pid = worker.process.pid
        (library,) = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        os.kill(int(library), signal.SIGTERM)
        assert worker.process.wait(timeout=WAIT + 10) == 1


def test_the_queue_adapter_offers_the_contract():
    assert isinstance(queue, queueing.Adapter)
    assert isinstance(build_report, queueing.Task)
{%- if cookiecutter.tasks == "arq" %}


async def test_arq_jobs_are_json_in_redis():
    """Not pickles: whoever can write to Redis must not run code in the worker.
    The job goes to a queue of its own, which no worker reads."""
    pool = await queue._pool()
    probe_queue = f"{settings.TASK_QUEUE}-json-probe"
    job = await pool.enqueue_job("items.json_probe", 7, "a", _queue_name=probe_queue)
    try:
        stored = json.loads(await pool.get(job_key_prefix + job.job_id))
    finally:
        await pool.delete(job_key_prefix + job.job_id, probe_queue)
    assert (stored["f"], stored["a"]) == ("items.json_probe", [7, "a"])


def test_arq_reads_an_acl_user_and_tls_from_redis_url(settings):
    """As redis-py reads REDIS_URL for the cache and the channel layer."""
    settings.REDIS_URL = "rediss://svc%40team:p%3Aw%2Fd@redis.internal:6380/2"
    redis_settings = queue._redis_settings()
    assert (redis_settings.username, redis_settings.password) == ("svc@team", "p:w/d")
    assert (redis_settings.host, redis_settings.port, redis_settings.database) == (
        "redis.internal",
        6380,
        2,
    )
    assert redis_settings.ssl
    assert redis_settings.ssl_check_hostname
{%- endif %}
{%- if cookiecutter.tasks == "dramatiq" %}


def test_dramatiq_hands_out_what_a_consumer_had_fetched_when_its_connection_broke():
    """Dramatiq's consumer thread closes its consumer on a broken connection and
    starts another: what was fetched and never handed out (a fetch whose answer
    was lost, the first consumer's cache) must come from the next, not stay
    unacknowledged while the worker runs. On a queue of its own, which no worker
    reads."""
    broker = queue.broker()
    probe_queue = f"{settings.TASK_QUEUE}-stranded-probe"
    broker.declare_queue(probe_queue)
    try:
        for number in range(3):
            broker.enqueue(
                dramatiq.Message(
                    queue_name=probe_queue,
                    actor_name="items.stranded_probe",
                    args=(number,),
                    kwargs={},
                    options={},
                )
            )
        broker.do_fetch(probe_queue, 1)  # a fetch whose answer was lost
        first = broker.consume(probe_queue, prefetch=2, timeout=100)
        handed = next(first)  # fetches the other two, hands out one
        first.close()  # what dramatiq's consumer thread does after the error
        second = broker.consume(probe_queue, prefetch=3, timeout=100)
        again = []
        deadline = time.monotonic() + 5
        while len(again) < 2 and time.monotonic() < deadline:
            if (message := next(second)) is not None:
                again.append(message)
        assert sorted(m.args[0] for m in [handed, *again]) == [0, 1, 2]
        for message in [handed, *again]:
            second.ack(message)
    finally:
        broker.flush(probe_queue)
{%- endif %}
{%- if cookiecutter.tasks in ("django", "django-q2") %}


async def fails_every_time():
    """A task's body (at the module's level, as Django's framework requires)."""
    raise ValueError("the attempt fails")


async def test_a_retry_is_enqueued_once_the_database_is_back(monkeypatch):
    """A failed attempt's retry is a row of the broker, the database. With the
    database away at that moment the attempt must not end: the library would
    finish it (django-q2 acknowledges it, Django's db_worker marks it failed),
    and the job would be lost. It tries again until the row is written, then
    ends failed (as in the template's fault test of a database restart)."""
    refused, taken = [], []
{%- if cookiecutter.tasks == "django-q2" %}

    def push(self, args, number, delay, traced):
        attempt = number
{%- else %}

    async def push(self, args, attempt, delay, trace):
        attempt += 1
{%- endif %}
        if len(refused) < 2:
            refused.append(attempt)
            raise OperationalError("the database is away")
        taken.append(attempt)

    monkeypatch.setattr(queue.Task, "{{ "_push" if cookiecutter.tasks == "django-q2" else "retry" }}", push)
    monkeypatch.setattr(queueing, "RETRY_ENQUEUE_SECONDS", 0.01)
    job = f"test-{uuid.uuid4().hex}"
{%- if cookiecutter.tasks == "django-q2" %}
    declared = queue.Task("t", fails_every_time, retries=1, time_limit=5)
    with pytest.raises(ValueError, match="the attempt fails"):
        await declared._run((), 1, job, None)
{%- else %}
    declared = queue.task("t", retries=1, time_limit=5)(fails_every_time)
    with pytest.raises(ValueError, match="the attempt fails"):
        await declared.func(SimpleNamespace(task_result=SimpleNamespace(id=job)))
{%- endif %}
    assert (refused, taken) == ([2, 2], [2])
{%- endif %}
