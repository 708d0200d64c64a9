"""The tasks a write calls for reach the broker once it has committed, even when
the broker is down or the web process dies just after the commit: a
transactional outbox.

A write keeps each task it calls for (keep()) in its own transaction, as a row
(core.PendingTask): the task and the write commit together or not at all. Once
the transaction has committed, the process that wrote it sends the task to the
broker at once (within ENQUEUE_TIMEOUT_SECONDS) and deletes the row. What it does
not send, the task worker's relay (core.task_worker) sends every
OUTBOX_RELAY_SECONDS until the broker takes it: at once when the broker refused
it, after HANDOFF when the process that kept it died before sending it. So a
write that committed gets its task eventually, acknowledged or not (a client's
retry with its Idempotency-Key gets the first answer, and the task runs all the
same), and a write that did not commit never sends one.

The cost: an insert in the write's transaction and a delete after it, per task.
The narrower design this replaced (a row only when the broker refused the task)
lost the task of a process killed between its commit and its enqueue.

Duplicates: a task the broker took may be sent again, when its row's delete
failed or its enqueue timed out but arrived. Tasks are idempotent for that, as
they must be anyway (a worker killed mid-task gets its task again):
items.tasks.record_change records one row per change id.

Traces (core.tracing): a kept task keeps the trace context of the request that
kept it (PendingTask.trace), and the relay sends it within that context, so that
the task continues the request's trace however late it runs. A library's own
publish-side instrumentation could not do that: the relay publishes outside any
request.
"""

import asyncio
import contextvars
import functools
import logging
from datetime import timedelta

from asgiref.sync import async_to_sync
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from core import metrics, queueing, tracing
from core.models import PendingTask

logger = logging.getLogger(__name__)

# What the writer waits for the broker before it leaves the task to the relay: a
# refused connection fails at once; a first publish on a loaded host can take
# over a second, and each that times out but still arrives is a second delivery.
ENQUEUE_TIMEOUT_SECONDS = 5.0
# How long the relay leaves a kept task to the process that wrote it: past this,
# that process died between its commit and its send, and the relay sends it.
HANDOFF = timedelta(seconds=30)
# Tasks a relay sends per round, and how long it holds them: another relay (one
# runs in each task worker) takes over what a dead one held once this is past.
BATCH = 100
LEASE = timedelta(minutes=2)


def keep(task: queueing.Task, *args) -> None:
    """Keeps `task` with `args` for the write under way: call inside its
    transaction (synchronous). Once it commits, this process sends the task.
    Outside a transaction, the relay sends it."""
    in_transaction = transaction.get_connection().in_atomic_block
    kept = PendingTask.objects.create(
        task=task.name,
        args=list(args),
        trace=tracing.carrier(),
        claimed_until=timezone.now() + HANDOFF if in_transaction else None,
    )
    if in_transaction:
        transaction.on_commit(
            functools.partial(_send_committed, kept.pk, task, list(args)), robust=True
        )


def _send_committed(pk: int, task: queueing.Task, args: list) -> None:
    # On the thread of the write's transaction (sync_to_async): the send runs on
    # the event loop that thread was called from, the request's.
    async_to_sync(_send)(pk, task, args)


async def _send(pk: int, task: queueing.Task, args: list) -> None:
    """Sends a committed kept task and deletes its row, or leaves it to the relay
    at once; never raises: the write it follows has committed."""
    try:
        await _enqueue_within_timeout(task, args)
    except Exception as exc:
        metrics.TASKS_DEFERRED.labels(task.name).inc()
        logger.warning(
            "task kept for the relay", extra={"task": task.name, "error": repr(exc)}
        )
        try:
            await PendingTask.objects.filter(pk=pk).aupdate(
                claimed_until=None, last_error=repr(exc)[:1000]
            )
        except Exception:
            # Still kept: the relay sends it once HANDOFF has passed.
            logger.exception(
                "kept task not released to the relay", extra={"task": task.name}
            )
        return
    try:
        await PendingTask.objects.filter(pk=pk).adelete()
    except Exception:
        # Sent, and still kept: the relay sends it once more, which a task is
        # idempotent for.
        logger.exception("sent task still kept", extra={"task": task.name})


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
