"""A django-tasks-db worker killed mid-task, on the real worker and database.

Its own module: the worker of tests/test_tasks.py would take the task too. Its
worker dead-letters a task after one delivery whose worker died
(TASK_MAX_DELIVERIES=1), so that one kill shows both the redelivery and the
bound. The redelivery comes from core.queue's reaper once record_change's time
limit and HARD_LIMIT_MARGIN have passed: about 35 s.
"""

import asyncio
import uuid

import pytest
from asgiref.sync import sync_to_async
from django.db import connections

from core import queueing
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
# The reaper's delay for record_change, and a worker's start and its next look.
REDELIVERY = record_change.time_limit + queueing.HARD_LIMIT_MARGIN + WAIT


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
        for alias in connections:
            connections[alias].close_pool()


async def test_a_task_whose_worker_was_killed_is_run_again_then_dead_lettered(
    worker_environment,
):
    first = await asyncio.to_thread(worker_environment)
    change_id = str(uuid.uuid4())
    lock = await asyncio.to_thread(lock_item_changes)
    try:
        job = await record_change.enqueue(424246, "item.updated", change_id)
        await kill_delivery(job, 1)
        # A db_worker process that ends stops its supervisor: the worker restarts.
        assert await asyncio.to_thread(first.process.wait, WAIT) != 0
        second = await asyncio.to_thread(worker_environment)

        async def dead_lettered():
            row = await asyncio.to_thread(delivery, job)
            return row and row.dead_lettered_at

        # The killed row, RUNNING, is put back to READY, delivered a second time,
        # and dead-lettered instead of run.
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
