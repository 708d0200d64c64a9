"""The task queue: django-q2, with the database as its broker (Q_CLUSTER's orm).

core.queueing's contract, for django-q2. A task is a row of django_q_ormq whose
key is TASK_QUEUE. django-q2 calls a synchronous function by its dotted path: the
Task object itself, which runs the coroutine with async_to_sync.

Retries are this adapter's: django-q2's own are redeliveries of an attempt that
was not acknowledged, all after Q_CLUSTER's one `retry` delay, which must exceed
the longest time limit, and its function never learns the attempt's number.
So every attempt is acknowledged, failed or not (ack_failures), and a failed
attempt with retries left enqueues the next one, with its number, as a row that
the broker hands out no earlier than core.tasks.retry_delay() from now, written
before the attempt ends however long the database is away
(core.queueing.enqueue_retry).
django-q2's redelivery stays for what it is good at: an attempt whose worker
died before it could report.

django-q2's per-task timeout, a few seconds after core.tasks' time limit, stops
a task that ignores cancellation: its worker process is replaced. That attempt
is not retried.

The worker is django-q2's cluster (what `manage.py qcluster` runs): a sentinel
process forking WORKER_CONCURRENCY workers, a pusher that takes rows from the
broker and a monitor that acknowledges them. They log through Django's LOGGING,
which they inherit. Traces (core.tracing) are set up in each worker process as
it starts (django-q2's post_spawn) and flushed as it exits (multiprocessing's
exit finalizers: the process ends with os._exit, which runs no atexit hook);
the other processes run no task and are not traced.
"""

import math
import multiprocessing.util
import os
import signal
import threading
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta

from asgiref.sync import async_to_sync, sync_to_async
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connections
from django.dispatch import receiver
from django.utils import timezone
from django_q.brokers.orm import ORM
from django_q.models import OrmQ
from django_q.signals import post_spawn
from django_q.tasks import async_task

from core import queueing, tasks, tracing
from core.database import close_databases


class DeferringBroker(ORM):
    """django-q2's ORM broker, with a row that no worker takes for `delay`
    seconds. The broker hands out rows whose `lock` has passed, and locks a row it
    hands out until Q_CLUSTER's retry has passed; a new row's lock is its start."""

    def __init__(self, delay: float):
        super().__init__(settings.TASK_QUEUE)
        self.delay = delay

    def enqueue(self, task: str) -> int:
        lock = timezone.now() + timedelta(seconds=self.delay)
        row = self.get_connection().create(key=self.list_key, payload=task, lock=lock)
        return row.pk


class Task:
    def __init__(
        self, name: str, body: Callable[..., Awaitable], retries: int, time_limit: float
    ):
        self.name = name
        self.body = body
        self.retries = retries
        self.time_limit = time_limit
        # What the worker imports: this object, which replaces the body in its
        # module (task() decorates module-level coroutines).
        self.path = f"{body.__module__}.{body.__name__}"
        # django-q2 sets it with signal.alarm, which takes whole seconds.
        self.hard_limit = math.ceil(time_limit + queueing.HARD_LIMIT_MARGIN)
        if self.hard_limit > settings.Q_CLUSTER["timeout"]:
            raise ImproperlyConfigured(
                f"task {name}: its hard time limit ({self.hard_limit} s) exceeds "
                f"Q_CLUSTER's timeout ({settings.Q_CLUSTER['timeout']} s)"
            )

    async def enqueue(self, *args) -> str:
        # async_task inserts a row: in a thread, as the async ORM does.
        traced = tasks.trace_kwargs()
        job_id = await sync_to_async(self._push)(args, 1, 0.0, traced)
        tasks.enqueued(self.name, job_id)
        return job_id

    def _push(self, args: tuple, number: int, delay: float, traced: dict) -> str:
        """Enqueues attempt `number`, with `traced` (core.tasks.trace_kwargs());
        returns its job id: this adapter's, which core.tasks counts the attempt's
        deliveries by and logs (django-q2's own id does not reach the function it
        calls)."""
        job = uuid.uuid4().hex
        async_task(
            self.path,
            *args,
            attempt=number,
            job=job,
            **traced,
            timeout=self.hard_limit,
            broker=DeferringBroker(delay),
        )
        return job

    def __call__(self, *args, attempt: int, job: str | None = None, trace=None):
        """What django-q2's worker runs: attempt number `attempt` of job `job`."""
        return async_to_sync(self._run)(args, attempt, job, trace)

    async def _run(self, args: tuple, number: int, job: str | None, trace):
        decision = await tasks.attempt(
            self.name,
            self.body,
            args,
            number=number,
            attempts=self.retries + 1,
            time_limit=self.time_limit,
            job=job,
            trace=trace,
        )
        match decision:
            case tasks.Retry(error=error, delay=delay):
                # The next attempt continues the same trace.
                retried = {"trace": trace} if trace else {}
                # A database away past Q_CLUSTER's timeout gets this worker
                # replaced by django-q2, the attempt unacknowledged: handed out
                # again after Q_CLUSTER's retry, one delivery more.
                await queueing.enqueue_retry(
                    lambda: sync_to_async(self._push)(args, number + 1, delay, retried),
                    self.name,
                    number + 1,
                )
                raise error
            case tasks.GiveUp(error=error):
                raise error
            case tasks.DeadLettered():
                return None
        return decision.result


def task(name: str, *, retries: int, time_limit: float):
    def declare(body: Callable[..., Awaitable]) -> Task:
        return Task(name, body, retries, time_limit)

    return declare


async def close() -> None:
    """Nothing to close: enqueue writes a row on Django's connections, which
    their owner closes."""


def queue_depth() -> int:
    """The queue's rows: tasks waiting, waiting for a retry, or running (a row
    goes when its attempt is acknowledged), as arq's queue counts them."""
    alias = settings.Q_CLUSTER["orm"]
    try:
        return OrmQ.objects.using(alias).filter(key=settings.TASK_QUEUE).count()
    finally:
        # Each scrape comes in a thread of its own, which would keep a connection.
        connections[alias].close()


@receiver(post_spawn)
def trace_worker_process(**kwargs) -> None:
    """In each of django-q2's worker processes as it starts (post_spawn)."""
    tracing.setup(tasks_only=True)
    # Run as the process exits, once its last task has ended.
    multiprocessing.util.Finalize(None, tracing.shutdown, exitpriority=0)


def main() -> None:
    """django-q2's cluster, as `manage.py qcluster` runs it, in a process that
    closes its database connections before it forks, and with a deadline on
    stopping."""
    from django_q.cluster import Cluster

    # psycopg's connections and pools cannot be shared by processes. django-q2
    # closes the connections before it forks its processes, but not the pool.
    os.register_at_fork(before=close_databases)
    cluster = Cluster()
    cluster.start()

    def stop(signum, frame):
        # django-q2 stops taking tasks and waits for its workers to finish the
        # ones they hold, for as long as those take. Past the deadline, the
        # cluster is killed; its unacknowledged tasks are handed out again after
        # Q_CLUSTER's retry.
        deadline = threading.Timer(
            float(os.environ["WORKER_SHUTDOWN_TIMEOUT"]),
            os.killpg,
            (0, signal.SIGKILL),
        )
        deadline.daemon = True
        deadline.start()
        cluster.sig_handler(signum, frame)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)
    cluster.sentinel.join()
