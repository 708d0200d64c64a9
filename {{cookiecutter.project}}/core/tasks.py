"""What every background task gets around its body, whatever the queue library:
a time limit, one log line per attempt, the task metrics of core.metrics, and the
decision whether a failed attempt is retried.

The library's adapter (core.queue) calls `enqueued` once the broker holds a task,
and wraps each attempt a worker makes in `attempt`, whose outcome says what the
queue does next: the adapter only translates it into its library's terms. Task
bodies are coroutines, so that they use the async ORM as the views do.
"""

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from typing import ClassVar

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections

from core import metrics

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


def enqueued(name: str, job_id: str) -> None:
    metrics.TASKS_ENQUEUED.labels(name).inc()
    logger.info("task enqueued", extra={"task": name, "job_id": job_id})


def retry_delay(attempt: int) -> float:
    """Seconds before the attempt after `attempt` (1 is the first): exponential,
    from TASK_RETRY_DELAY, at most ten minutes."""
    return min(settings.TASK_RETRY_DELAY * 2 ** (attempt - 1), 600.0)


async def attempt(
    name: str,
    body: Callable[..., Awaitable],
    args: tuple,
    *,
    number: int,
    attempts: int,
    time_limit: float,
) -> Succeeded | Retry | GiveUp:
    """Runs attempt `number` of at most `attempts`, and decides what follows it.
    A body still running after `time_limit` seconds is cancelled, and the attempt
    fails with TimeoutError."""
    log = {"task": name, "attempt": number, "attempts": attempts}
    metrics.TASKS_STARTED.labels(name).inc()
    started = time.perf_counter()
    decision: Succeeded | Retry | GiveUp | None = None
    try:
        with metrics.TASKS_RUNNING.labels(name).track_inprogress():
            async with asyncio.timeout(time_limit):
                result = await body(*args)
    except Exception as error:
        if number < attempts:
            decision = Retry(error, retry_delay(number))
            metrics.TASKS_RETRIED.labels(name).inc()
            logger.warning("task attempt failed, will retry", extra=log, exc_info=True)
        else:
            decision = GiveUp(error)
            metrics.TASKS_FAILED.labels(name, type(error).__name__).inc()
            logger.error("task failed", extra=log, exc_info=True)
    else:
        decision = Succeeded(result)
        metrics.TASKS_SUCCEEDED.labels(name).inc()
    finally:
        # As at the end of a request: the attempt's database connection goes back
        # to the pool, and one that broke is not used again.
        await sync_to_async(close_old_connections)()
        duration = time.perf_counter() - started
        # None: the attempt itself was cancelled (its worker stopping), a failure.
        outcome = decision.outcome if decision else "failed"
        metrics.TASK_DURATION.labels(name, outcome).observe(duration)
        if outcome == "succeeded":
            logger.info("task succeeded", extra={**log, "duration": duration})
    return decision
