"""The task queue: Django's task framework (django.tasks), on django-tasks-db's
DatabaseBackend: tasks are rows of this service's database. Tasks are coroutines
end to end.

core.queueing's contract, for Django's framework. Tasks wait as READY rows of
django_tasks_db's DBTaskResult whose queue_name is TASK_QUEUE. django-tasks-db's
`db_worker` runs one task at a time, so this module's main() runs
WORKER_CONCURRENCY of them as child processes, passes them SIGTERM and SIGINT
(each finishes its task, then exits) and kills those still running after
WORKER_SHUTDOWN_TIMEOUT.

Django's framework has no retries: a failed attempt enqueues the next one itself,
as a new row that runs after core.tasks.retry_delay, carrying its attempt number,
and waits for the database to take it (core.queueing.enqueue_retry).
Neither has it a hard time limit: core.tasks' asyncio limit is the only one, so a
body that blocks without awaiting holds its worker process until it returns.

A row whose worker was killed mid-task stays RUNNING: django-tasks-db keeps no
heartbeat and never runs it again (its db_worker only takes READY rows, and
prune_db_task_results deletes finished ones). So the supervisor below puts back
to READY, every REAP_SECONDS, the RUNNING rows of its queue older than their
task's time limit and HARD_LIMIT_MARGIN: core.tasks' limit has cancelled every
attempt by then, unless its body blocks without awaiting, and then it runs twice,
which tasks are idempotent for.

Traces (core.tracing) are set up in each db_worker process, which runs tasks,
and flushed as it ends; not in the supervisor.
"""

import dataclasses
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connections
from django.tasks import Task as DjangoTask
from django.tasks import TaskContext, TaskResultStatus
from django.tasks.signals import (
    log_task_finished,
    log_task_started,
    task_finished,
    task_started,
)
from django.utils import timezone

from core import queueing, tasks, tracing
from core.database import close_databases

logger = logging.getLogger(__name__)

# DBTaskResult.queue_name is a CharField(max_length=32).
QUEUE_NAME_MAX_LENGTH = 32
# Seconds between two looks for the RUNNING rows of dead workers.
REAP_SECONDS = 5.0


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Task(DjangoTask):
    """A django.tasks Task with this service's task interface. The worker finds it
    again by its function's module path, which is the declared body's."""

    task_name: str
    retries: int
    time_limit: float

    @property
    def name(self) -> str:
        return self.task_name

    async def enqueue(self, *args) -> str:
        """Unlike Django's own enqueue, a coroutine returning the job's id."""
        result = await self.aenqueue(*args, **tasks.trace_kwargs())
        tasks.enqueued(self.name, result.id)
        return result.id

    async def retry(
        self, args: tuple, attempt: int, delay: float, trace: dict | None
    ) -> None:
        """Enqueues attempt `attempt + 1`, to run `delay` seconds from now, in the
        trace of the first (`trace`)."""
        run_after = timezone.now() + timedelta(seconds=delay)
        result = await self.using(run_after=run_after).aenqueue(
            *args, attempt=attempt + 1, **({"trace": trace} if trace else {})
        )
        logger.info(
            "task retry enqueued",
            extra={"task": self.name, "job_id": result.id, "attempt": attempt + 1},
        )


def task(name: str, *, retries: int, time_limit: float):
    if len(settings.TASK_QUEUE) > QUEUE_NAME_MAX_LENGTH:
        raise ImproperlyConfigured(
            f"TASK_QUEUE {settings.TASK_QUEUE!r} is longer than django-tasks-db's "
            f"{QUEUE_NAME_MAX_LENGTH} characters"
        )

    def declare(body: Callable[..., Awaitable]) -> Task:
        # Keyword-only, so that it never meets the body's positional arguments.
        # The context's result is the row: a row put back to READY runs with its
        # id again, the job core.tasks counts deliveries by.
        async def run(context: TaskContext, *args, attempt: int = 1, trace=None):
            decision = await tasks.attempt(
                name,
                body,
                args,
                number=attempt,
                attempts=retries + 1,
                time_limit=time_limit,
                job=context.task_result.id,
                trace=trace,
            )
            match decision:
                case tasks.Retry(error=error, delay=delay):
                    # Its db_worker would mark the row failed; a database away
                    # for good leaves it RUNNING, handed out again by the reaper.
                    await queueing.enqueue_retry(
                        lambda: declared.retry(args, attempt, delay, trace),
                        name,
                        attempt + 1,
                    )
                    raise error
                case tasks.GiveUp(error=error):
                    raise error
                case tasks.DeadLettered():
                    return None
            return decision.result

        # The worker finds the task by the body's path (functools.wraps would also
        # hide `context`, which Django looks for in the signature).
        run.__module__, run.__name__ = body.__module__, body.__name__
        run.__qualname__ = body.__qualname__
        declared = Task(
            func=run,
            queue_name=settings.TASK_QUEUE,
            task_name=name,
            retries=retries,
            time_limit=time_limit,
            takes_context=True,
        )
        return declared

    return declare


async def close() -> None:
    """Nothing to close: enqueue writes a row on Django's connections, which
    their owner closes."""


def queue_depth() -> int:
    from django_tasks_db.models import DBTaskResult

    # READY rows include the retries whose run_after is still to come.
    waiting = DBTaskResult.objects.filter(
        status=TaskResultStatus.READY, queue_name=settings.TASK_QUEUE
    )
    try:
        return waiting.count()
    finally:
        # Each scrape comes in a thread of its own: its connection goes back now.
        connections[waiting.db].close()


def reap_stale_rows() -> int:
    """Puts the RUNNING rows whose worker died back to READY; returns how many."""
    from django_tasks_db.models import DBTaskResult

    now = timezone.now()
    reaped = 0
    try:
        for declared in queueing.declared_tasks().values():
            limit = declared.time_limit + queueing.HARD_LIMIT_MARGIN
            reaped += DBTaskResult.objects.filter(
                status=TaskResultStatus.RUNNING,
                queue_name=settings.TASK_QUEUE,
                task_path=declared.module_path,
                started_at__lt=now - timedelta(seconds=limit),
            ).update(status=TaskResultStatus.READY)
    finally:
        # Back to the pool: this process has nothing else to do with it.
        connections[DBTaskResult.objects.db].close()
    if reaped:
        logger.warning(
            "tasks of dead workers handed out again", extra={"count": reaped}
        )
    return reaped


def db_worker_command() -> list[str]:
    return [
        *queueing.WORKER_COMMAND,
        "db_worker",
        f"--queue-name={settings.TASK_QUEUE}",
        # core.task_worker owns this process's life; DEBUG would turn the reloader on.
        "--no-reload",
    ]


def run_db_worker(argv: list[str]) -> None:
    """One db_worker process, under LOGGING: db_worker would otherwise set its
    loggers' levels from --verbosity."""
    from django_tasks_db.management.commands.db_worker import Command

    class DbWorker(Command):
        def configure_logging(self, verbosity: int) -> None:
            pass

    # core.tasks logs each attempt; django.tasks would log it again, a failed
    # attempt that will be retried as an error.
    task_started.disconnect(log_task_started)
    task_finished.disconnect(log_task_finished)
    tracing.setup(tasks_only=True)
    try:
        DbWorker().run_from_argv(argv)
    finally:
        close_databases()
        tracing.shutdown()


def main() -> None:
    """The supervisor of the db_worker processes, or, as one of them, a db_worker."""
    if sys.argv[1:2] == ["db_worker"]:
        run_db_worker(sys.argv)
    else:
        supervise_db_workers()


def supervise_db_workers() -> None:
    """Runs WORKER_CONCURRENCY db_worker processes until a signal stops them, or
    one of them ends: then the others are stopped, so that the worker restarts
    whole."""
    concurrency = int(os.environ["WORKER_CONCURRENCY"])
    shutdown_timeout = float(os.environ["WORKER_SHUTDOWN_TIMEOUT"])
    # Recorded here, passed on by the loop below: a signal that comes while the
    # processes start still reaches each of them, and only once.
    received: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    command = db_worker_command()
    # The command is this module's, never input.
    children = [subprocess.Popen(command) for _ in range(concurrency)]  # noqa: S603
    forwarded = 0
    stopping_since = None
    reaped_at = 0.0
    while alive := [child for child in children if child.poll() is None]:
        if not received and time.monotonic() - reaped_at > REAP_SECONDS:
            reaped_at = time.monotonic()
            try:
                reap_stale_rows()
            except Exception:
                # The database may be down: the next round tries again.
                logger.warning("could not look for dead workers' tasks", exc_info=True)
        # Every signal: db_worker stops its running task at the second one.
        for signum in received[forwarded:]:
            for child in alive:
                child.send_signal(signum)
            forwarded += 1
        if stopping_since is None and (received or len(alive) < len(children)):
            stopping_since = time.monotonic()
            if not received:
                logger.error("a db_worker process ended: stopping the others")
                for child in alive:
                    child.terminate()
        elif stopping_since and time.monotonic() - stopping_since > shutdown_timeout:
            logger.error(
                "db_worker processes still running at the shutdown timeout: killed",
                extra={"pids": [child.pid for child in alive]},
            )
            for child in alive:
                child.kill()
        time.sleep(0.2)
    close_databases()
    clean = received and all(child.returncode == 0 for child in children)
    sys.exit(0 if clean else 1)
