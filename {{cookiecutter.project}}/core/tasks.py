"""What every background task gets around its body, whatever the queue library:
a time limit, one log line per attempt, the task metrics of core.metrics, the
decision whether a failed attempt is retried, and the bound on deliveries of an
attempt whose worker died.

The library's adapter (core.queue) calls `enqueued` once the broker holds a task,
and wraps each attempt a worker makes in `attempt`, whose outcome says what the
queue does next: the adapter only translates it into its library's terms. Task
bodies are coroutines, so that they use the async ORM as the views do.

Traces (core.tracing) cross into the worker here too, the same way for every
library: the adapter adds `trace_kwargs()` to the task's keyword arguments as it
enqueues it, and hands the `trace` it receives back to `attempt`, whose span
continues the enqueuing request's trace. A keyword argument, because it is what
all five libraries carry as they are: arq and Django's framework have no
message headers, and django-q2 passes none to its function. A message without
it (tracing off, or sent by an older release) runs as before, in a trace of its
own. Celery's instrumentation (opentelemetry-instrumentation-celery), the one
well-kept instrumentation of the five, is not used: the other four need this
carrier anyway, core.outbox needs it in its rows (the relay publishes a kept
task later, outside the request), and both together would give a Celery task
two spans, with the attempt's outcome in one only.
"""

import asyncio
import dataclasses
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import ClassVar

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections
from django.db.models import F
from django.utils import timezone

from core import metrics, tracing
from core.models import TaskDelivery

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class Succeeded:
    """The attempt succeeded: the task is done."""

    result: object
    outcome: ClassVar[str] = "succeeded"


@dataclasses.dataclass(frozen=True, slots=True)
class Retry:
    """The attempt failed with `error`; the next one runs after `delay` seconds."""

    error: Exception
    delay: float
    outcome: ClassVar[str] = "retried"


@dataclasses.dataclass(frozen=True, slots=True)
class GiveUp:
    """The last attempt failed with `error`: the task has failed."""

    error: Exception
    outcome: ClassVar[str] = "failed"


@dataclasses.dataclass(frozen=True, slots=True)
class DeadLettered:
    """The job was delivered TASK_MAX_DELIVERIES times and no attempt finished:
    it is not run again, and the library must drop it (acknowledge it, without a
    retry). Its core.TaskDelivery row keeps it."""

    deliveries: int
    outcome: ClassVar[str] = "dead_lettered"


def trace_kwargs() -> dict:
    """What a task's message carries beside its arguments: `trace`, the W3C
    headers of the span it is enqueued in; nothing when tracing is off or no span
    is current (core.outbox's relay sends a kept task within its request's)."""
    headers = tracing.carrier()
    return {"trace": headers} if headers else {}


def enqueued(name: str, job_id: str) -> None:
    metrics.TASKS_ENQUEUED.labels(name).inc()
    logger.info("task enqueued", extra={"task": name, "job_id": job_id})


def retry_delay(attempt: int) -> float:
    """Seconds before the attempt after `attempt` (1 is the first): exponential,
    from TASK_RETRY_DELAY, at most ten minutes."""
    return min(settings.TASK_RETRY_DELAY * 2 ** (attempt - 1), 600.0)


async def delivered(job: str, name: str, args: tuple) -> int:
    """Records a delivery of `job`; returns how many deliveries its attempt has
    had, this one included (1 unless earlier ones never finished)."""
    now, worker = timezone.now(), f"{socket.gethostname()}:{os.getpid()}"
    # A dead-lettered job's row counts too: delivered again (its worker died
    # before the library dropped it), it is dead-lettered again.
    earlier = TaskDelivery.objects.filter(job=job)
    if await earlier.aupdate(
        deliveries=F("deliveries") + 1, started_at=now, worker=worker
    ):
        return (await earlier.aget()).deliveries
    await TaskDelivery.objects.acreate(
        job=job, task=name, args=list(args), started_at=now, worker=worker
    )
    return 1


async def finished(job: str) -> None:
    """Drops the delivery's row: the attempt ended, whatever its outcome (one
    cancelled by its worker stopping too: shielded from that cancellation)."""
    try:
        await asyncio.shield(TaskDelivery.objects.filter(job=job).adelete())
    except Exception:
        # The database went away: the row stays, and counts one delivery more if
        # the job comes again. That is all it costs; the outcome stands.
        logger.warning(
            "task delivery not cleared", extra={"job_id": job}, exc_info=True
        )


async def dead_letter(job: str, name: str, deliveries: int) -> DeadLettered:
    """Keeps the job's row as its dead letter; counted and logged once."""
    row = TaskDelivery.objects.filter(job=job, dead_lettered_at=None)
    if await row.aupdate(dead_lettered_at=timezone.now()):
        metrics.TASKS_DEAD_LETTERED.labels(name).inc()
        logger.error(
            "task dead-lettered: its worker died at each delivery",
            extra={"task": name, "job_id": job, "deliveries": deliveries},
        )
    return DeadLettered(deliveries)


async def attempt(
    name: str,
    body: Callable[..., Awaitable],
    args: tuple,
    *,
    number: int,
    attempts: int,
    time_limit: float,
    job: str | None,
    trace: dict[str, str] | None = None,
) -> Succeeded | Retry | GiveUp | DeadLettered:
    """Runs attempt `number` of at most `attempts` of job `job`, and decides what
    follows it. A body still running after `time_limit` seconds is cancelled, and
    the attempt fails with TimeoutError. A job delivered more than
    TASK_MAX_DELIVERIES times without an attempt finishing is dead-lettered
    instead. `job` None (a message of an older release, without an id): its
    deliveries are not counted. When tracing is on, the attempt, its queries and
    its log lines are in a span whose parent is the context `trace` (the message's
    `trace_kwargs()`)."""
    log = {"task": name, "attempt": number, "attempts": attempts, "job_id": job}
    metrics.TASKS_STARTED.labels(name).inc()
    started = time.perf_counter()
    decision: Succeeded | Retry | GiveUp | DeadLettered | None = None
    attributes = span_attributes(name, number, attempts, job)
    with tracing.task_span(name, trace, attributes) as span:
        try:
            # In the attempt: a database that cannot record the delivery fails
            # it, and it is retried as any failed attempt.
            deliveries = await delivered(job, name, args) if job is not None else 1
            if deliveries > settings.TASK_MAX_DELIVERIES:
                decision = await dead_letter(job, name, deliveries)
                return decision
            if deliveries > 1:
                logger.warning(
                    "task delivered again: an earlier delivery never finished",
                    extra={**log, "deliveries": deliveries},
                )
            with metrics.TASKS_RUNNING.labels(name).track_inprogress():
                async with asyncio.timeout(time_limit):
                    result = await body(*args)
        except Exception as error:
            if number < attempts:
                decision = Retry(error, retry_delay(number))
                metrics.TASKS_RETRIED.labels(name).inc()
                logger.warning(
                    "task attempt failed, will retry", extra=log, exc_info=True
                )
            else:
                decision = GiveUp(error)
                metrics.TASKS_FAILED.labels(name, type(error).__name__).inc()
                logger.error("task failed", extra=log, exc_info=True)
        else:
            decision = Succeeded(result)
            metrics.TASKS_SUCCEEDED.labels(name).inc()
        finally:
            if job is not None and not isinstance(decision, DeadLettered):
                await finished(job)
            # As at the end of a request: the attempt's database connection goes
            # back to the pool, and one that broke is not used again.
            await sync_to_async(close_old_connections)()
            duration = time.perf_counter() - started
            # None: the attempt itself was cancelled (its worker stopping), a
            # failure.
            outcome = decision.outcome if decision else "failed"
            metrics.TASK_DURATION.labels(name, outcome).observe(duration)
            if outcome == "succeeded":
                logger.info("task succeeded", extra={**log, "duration": duration})
            tracing.task_ended(span, outcome, getattr(decision, "error", None))
    return decision


def span_attributes(name: str, number: int, attempts: int, job: str | None) -> dict:
    """The attempt's span attributes (OpenTelemetry's messaging conventions)."""
    attributes = {
        "messaging.operation.type": "process",
        "messaging.destination.name": settings.TASK_QUEUE,
        "task.name": name,
        "task.attempt": number,
        "task.attempts": attempts,
    }
    if job is not None:
        attributes["messaging.message.id"] = job
    return attributes
