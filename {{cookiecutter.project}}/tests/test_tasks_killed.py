"""A worker killed mid-task, on the real worker, database and broker.

Its own module: the worker of tests/test_tasks.py would take the task too (Celery's
killed child is replaced at once, and its tests are there). The worker here
dead-letters a task after one delivery whose worker died (TASK_MAX_DELIVERIES=1),
so that one kill shows both the redelivery and the bound.
{%- if cookiecutter.tasks == "django" %}

The redelivery comes from core.queue's reaper once record_change's time limit and
HARD_LIMIT_MARGIN have passed: about 35 s, waited for.
{%- else %}

{% if cookiecutter.tasks == "dramatiq" -%}
The redelivery comes from the RedisBroker's maintenance once the dead worker's
last heartbeat is heartbeat_timeout old: the longest task's hard time limit, over
two minutes.
{%- elif cookiecutter.tasks == "arq" -%}
The redelivery comes once the job's in-progress key expires: the longest job
timeout and 10 s, over two minutes.
{%- else -%}
The redelivery comes once the task's row is unlocked: Q_CLUSTER's retry, over five
minutes.
{%- endif %}
Rather than wait, the test checks the library's own record of when
(redelivery_due), and moves it back by that much: what the library then does is
real.
{%- endif %}
"""

import asyncio
{%- if cookiecutter.tasks == "dramatiq" %}
import json
{%- endif %}
import uuid
{%- if cookiecutter.tasks == "django-q2" %}
from datetime import timedelta
{%- endif %}

import pytest
{%- if cookiecutter.tasks == "arq" %}
import redis
from arq.constants import in_progress_key_prefix
{%- elif cookiecutter.tasks == "dramatiq" %}
import redis
{%- endif %}
from asgiref.sync import sync_to_async
{%- if cookiecutter.tasks != "django" %}
from django.conf import settings
{%- endif %}
from django.db import connections
{%- if cookiecutter.tasks == "django-q2" %}
from django.db.models import F
from django.utils import timezone
from django_q.models import OrmQ
{%- endif %}

{% if cookiecutter.tasks == "django" -%}
from core import queueing
{% elif cookiecutter.tasks == "dramatiq" -%}
from core import queue, queueing
{% elif cookiecutter.tasks == "arq" -%}
from core import queue
{% endif -%}
from core.database import close_databases
from items.tasks import record_change
from tests.test_tasks import (
    WAIT,
    change_rows,
    dead_letters,
    dead_letters_command,
    delivery,
    eventually,
    kill_delivery,
    lock_item_changes,
    start_worker,
    stop_worker,
    worker_database_url,
)

pytestmark = pytest.mark.django_db(transaction=True)
{%- if cookiecutter.tasks == "django" %}
# The reaper's delay for record_change, and a worker's start and its next look.
REDELIVERY = record_change.time_limit + queueing.HARD_LIMIT_MARGIN + WAIT
{%- else %}
# Once redelivery_due has moved the library's clock: its next look.
REDELIVERY = WAIT
{%- endif %}


@pytest.fixture
def worker_environment(django_db_blocker, tmp_path):
    with django_db_blocker.unblock():
        database_url = worker_database_url()
    workers = []

    def start():
        worker = start_worker(
            database_url,
            tmp_path / f"metrics-{len(workers)}",
            TASK_MAX_DELIVERIES="1",
            WORKER_CONCURRENCY="1",
        )
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        if worker.process.poll() is None:
            stop_worker(worker)
    with django_db_blocker.unblock():
        asyncio.run(sync_to_async(connections.close_all)())
        close_databases()
{%- if cookiecutter.tasks == "dramatiq" %}


def redelivery_due(job: str) -> None:
    """The dead worker's last heartbeat, which the broker's maintenance compares
    with heartbeat_timeout, made older by that timeout: the worker that holds the
    job's message unacknowledged is the dead one. The broker keeps each message
    under an id of its own (redis_message_id), a new one at each enqueue."""
    heartbeat_timeout = queue.broker().heartbeat_timeout
    assert heartbeat_timeout == queue.redelivery_after() * 1000
    namespace, queue_name = queue.NAMESPACE, settings.TASK_QUEUE
    heartbeats = f"{namespace}:__heartbeats__"
    client = redis.Redis.from_url(queueing.redis_url("Dramatiq"), socket_timeout=5)
    try:
        messages = client.hgetall(f"{namespace}:{queue_name}.msgs")
        (stored,) = [
            key
            for key, message in messages.items()
            if json.loads(message)["message_id"] == job
        ]
        holders = [
            key.decode()
            .removeprefix(f"{namespace}:__acks__.")
            .removesuffix(f".{queue_name}")
            for key in client.scan_iter(f"{namespace}:__acks__.*.{queue_name}")
            if client.sismember(key, stored)
        ]
        assert len(holders) == 1, holders
        (dead,) = holders
        last = client.zscore(heartbeats, dead)
        assert last is not None, "the dead worker has no heartbeat to age"
        client.zadd(heartbeats, {dead: last - heartbeat_timeout})
    finally:
        client.close()
{%- elif cookiecutter.tasks == "arq" %}


def redelivery_due(job: str) -> None:
    """The job's in-progress key, which keeps every worker from running it, gone
    as it would expire: set for the longest job timeout and 10 s."""
    longest = max(declared.timeout_s for declared in queue._functions)
    client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5)
    try:
        key = in_progress_key_prefix + job
        assert 0 < client.pttl(key) <= (longest + 10) * 1000
        assert client.delete(key) == 1
    finally:
        client.close()
{%- elif cookiecutter.tasks == "django-q2" %}


def redelivery_due(job: str) -> None:
    """The task's row, locked until Q_CLUSTER's retry has passed since a worker
    took it, unlocked by moving its lock back by that retry."""
    retry = timedelta(seconds=settings.Q_CLUSTER["retry"])
    try:
        rows = OrmQ.objects.filter(key=settings.TASK_QUEUE)
        (lock,) = rows.values_list("lock", flat=True)
        assert timezone.now() < lock <= timezone.now() + retry
        assert rows.update(lock=F("lock") - retry) == 1
    finally:
        connections["default"].close()
{%- endif %}


async def test_a_task_whose_worker_was_killed_is_run_again_then_dead_lettered(
    worker_environment,
):
    first = await asyncio.to_thread(worker_environment)
    change_id = str(uuid.uuid4())
    lock = await asyncio.to_thread(lock_item_changes)
    try:
        job = await record_change.enqueue(424246, "item.updated", change_id)
        await kill_delivery(job, 1)
{%- if cookiecutter.tasks == "django-q2" %}
        # The cluster replaces the worker process it lost, and stays up.
        second = first
{%- else %}
{%- if cookiecutter.tasks == "django" %}
        # A db_worker process that ends stops its supervisor: the worker restarts.
{%- else %}
        # The process killed was the worker's one: it is started again.
{%- endif %}
        assert await asyncio.to_thread(first.process.wait, WAIT) != 0
        second = await asyncio.to_thread(worker_environment)
{%- endif %}
{%- if cookiecutter.tasks != "django" %}
        await asyncio.to_thread(redelivery_due, job)
{%- endif %}

        async def dead_lettered():
            row = await asyncio.to_thread(delivery, job)
            return row and row.dead_lettered_at

        # The killed delivery is handed out a second time, and dead-lettered
        # instead of run.
        await eventually(dead_lettered, seconds=REDELIVERY)
    finally:
        lock.close()
    assert (await asyncio.to_thread(delivery, job)).deliveries == 2
    assert await asyncio.to_thread(change_rows, change_id) == 0
    assert await asyncio.to_thread(dead_letters, second) == 1
    # Retried, it runs once.
    assert "1 dead-lettered task(s) queued" in await dead_letters_command(
        "--retry", "all"
    )
    await eventually(lambda: asyncio.to_thread(change_rows, change_id))
    assert await asyncio.to_thread(change_rows, change_id) == 1
    assert await asyncio.to_thread(dead_letters, second) == 0
{%- if cookiecutter.tasks == "django-q2" %}
    assert second.process.poll() is None
{%- endif %}
