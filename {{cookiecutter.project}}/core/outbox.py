"""The tasks a committed write calls for reach the broker, even when it is down.

A write's task is enqueued right after its commit (items.signals). If the broker
does not take it within ENQUEUE_TIMEOUT_SECONDS, the task is kept in the database
(core.PendingTask) and the task worker's relay (core.task_worker) sends it again
every OUTBOX_RELAY_SECONDS until the broker takes it: an acknowledged write gets
its task eventually, and a write that did not commit never sends one.

Why not a full transactional outbox, every task written in its write's
transaction and sent by the relay alone: that costs every write an insert and
every task a relay's delay, to close a narrow gap this design leaves open: a web
process that dies between a commit and its enqueue loses that task.

Duplicates: an enqueue that timed out may still have reached the broker, and the
relay then sends it once more. Tasks are idempotent for that, as they must be
anyway (a worker killed mid-task gets its task again): items.tasks.record_change
records one row per change id.

Traces (core.tracing): a kept task keeps the trace context of the request that
kept it (PendingTask.trace), and the relay sends it within that context, so that
the task continues the request's trace however late it runs. A library's own
publish-side instrumentation could not do that: the relay publishes outside any
request.
"""

import asyncio
import contextvars
import logging
from datetime import timedelta

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from core import metrics, queueing, tracing
from core.models import PendingTask

logger = logging.getLogger(__name__)

# What the request waits for the broker before it keeps the task for the relay:
# a refused connection fails at once; a first publish on a loaded host can take
# over a second, and each that times out but still arrives is a second delivery.
ENQUEUE_TIMEOUT_SECONDS = 5.0
# Tasks a relay sends per round, and how long it holds them: another relay (one
# runs in each task worker) takes over what a dead one held once this is past.
BATCH = 100
LEASE = timedelta(minutes=2)


async def enqueue(task: queueing.Task, *args) -> None:
    """Enqueues `task`, or keeps it for the relay; never raises: the write it
    follows has committed. Lost only if the database is down too (counted in
    django_followups_failed_total{step="enqueue"} and logged)."""
    try:
        await _enqueue_within_timeout(task, list(args))
        return
    except Exception as exc:
        error = exc
    try:
        await PendingTask.objects.acreate(
            task=task.name,
            args=list(args),
            last_error=repr(error)[:1000],
            trace=tracing.carrier(),
        )
    except Exception:
        metrics.FOLLOWUPS_FAILED.labels("enqueue").inc()
        logger.exception("task lost", extra={"task": task.name})
        return
    metrics.TASKS_DEFERRED.labels(task.name).inc()
    logger.warning(
        "task kept for the relay", extra={"task": task.name, "error": repr(error)}
    )


def _claim() -> list[PendingTask]:
    now = timezone.now()
    with transaction.atomic():
        due = (
            PendingTask.objects.select_for_update(skip_locked=True)
            .filter(Q(claimed_until__isnull=True) | Q(claimed_until__lt=now))
            .order_by("id")[:BATCH]
        )
        claimed = list(due)
        PendingTask.objects.filter(pk__in=[row.pk for row in claimed]).update(
            claimed_until=now + LEASE
        )
    return claimed


def relay(runner: asyncio.Runner) -> int:
    """Sends the pending tasks, oldest first, on `runner`'s event loop; returns how
    many the broker took. Stops at the first the broker refuses: it is still down.
    What it claimed and did not try goes back at once, for the next round, not
    after the lease.

    The caller keeps one runner for all its rounds and closes it when it stops
    (core.task_worker): a broker's client made in a coroutine is bound to its loop
    (arq's pool: core.queue keeps one per loop), so a new loop per task or round
    would leave a client and its connection behind each time."""
    declared = queueing.declared_tasks()
    sent = 0
    claimed = _claim()
    for index, row in enumerate(claimed):
        task = declared.get(row.task)
        try:
            if task is None:
                raise LookupError(f"no task is declared as {row.task!r}")
            with tracing.continued(row.trace):
                # In this context, that holds the trace: the runner's own is
                # the one it was made in.
                runner.run(
                    _enqueue_within_timeout(task, row.args),
                    context=contextvars.copy_context(),
                )
        except Exception as exc:
            PendingTask.objects.filter(pk=row.pk).update(
                attempts=row.attempts + 1,
                last_error=repr(exc)[:1000],
                claimed_until=None,
            )
            untried = [later.pk for later in claimed[index + 1 :]]
            PendingTask.objects.filter(pk__in=untried).update(claimed_until=None)
            logger.warning(
                "relay could not send a task", extra={"task": row.task}, exc_info=True
            )
            break
        PendingTask.objects.filter(pk=row.pk).delete()
        metrics.TASKS_RELAYED.labels(row.task).inc()
        sent += 1
    return sent


async def _enqueue_within_timeout(task: queueing.Task, args: list) -> None:
    async with asyncio.timeout(ENQUEUE_TIMEOUT_SECONDS):
        await task.enqueue(*args)
