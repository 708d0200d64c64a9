"""The task queue: Celery, on Redis (REDIS_URL). Task bodies are coroutines.

core.queueing's contract, for Celery. `app` is configured from the CELERY_*
Django settings (config/task_queue.py): every key of this service in Redis starts
with TASK_QUEUE, and tasks wait in the list named after it. A task is
acknowledged once it has run, so that one whose worker process dies goes back to
the queue.

A task whose worker process dies mid-task is handed out again: by Celery at once
when one of its prefork processes dies (reject_on_worker_lost), by kombu's Redis
transport once its visibility timeout has passed when the whole worker died (its
unacknowledged message is restored by any worker's sweep, every few seconds).
That timeout follows the tasks' time limits: the longest a declared task's
message stays unacknowledged, running or held for its retry's countdown
(redelivery_after). Celery runs functions, not coroutines: each attempt runs
core.tasks.attempt in an event loop of its own (async_to_sync), in one of the
worker's prefork processes. A failed attempt is retried by Celery
(a new message, held by the worker until it is due) until the task's retries
are spent; Celery's hard time limit, a few seconds after core.tasks' own, kills
a process whose task ignores cancellation.

Traces (core.tracing) are set up in each prefork process as it starts, and
flushed as it exits: the processes that run tasks.

SIGTERM starts Celery's warm shutdown: no new tasks, the running ones finish.
Celery puts no limit on it; after WORKER_SHUTDOWN_TIMEOUT seconds the worker
signals itself SIGQUIT, Celery's cold shutdown, which stops the tasks still
running and hands them back to the queue.
"""

import asyncio
import os
import signal
import threading
from collections.abc import Awaitable, Callable

import redis
from asgiref.sync import async_to_sync
from celery import Celery, signals
from django.conf import settings

from core import queueing, tasks, tracing

app = Celery(settings.SERVICE_NAME)
app.config_from_object("django.conf:settings", namespace="CELERY")


@signals.setup_logging.connect
def keep_django_logging(**kwargs) -> None:
    """Django's LOGGING already set up the worker's logging: JSON lines on stdout.
    With a receiver for this signal, Celery configures no logging of its own."""


@signals.worker_process_init.connect
def trace_worker_process(**kwargs) -> None:
    tracing.setup(tasks_only=True)


@signals.worker_process_shutdown.connect
def flush_worker_process_traces(**kwargs) -> None:
    # Sent in the prefork process just before it exits (with os._exit).
    tracing.shutdown()


@signals.worker_shutting_down.connect
def limit_warm_shutdown(how: str, **kwargs) -> None:
    if how == "Warm":
        timer = threading.Timer(
            float(os.environ["WORKER_SHUTDOWN_TIMEOUT"]),
            os.kill,
            (os.getpid(), signal.SIGQUIT),
        )
        # A warm shutdown that ends in time exits without waiting for it.
        timer.daemon = True
        timer.start()


def _check_broker() -> None:
    # Without a broker URL, Celery would quietly try AMQP on localhost.
    queueing.redis_url("Celery")


class Task:
    def __init__(self, name: str, retries: int, message: Callable):
        self.name = name
        self.retries = retries
        self._message = message

    async def enqueue(self, *args) -> str:
        _check_broker()
        # Publishing is blocking I/O: not in the event loop.
        result = await asyncio.to_thread(
            self._message.apply_async, args, tasks.trace_kwargs()
        )
        tasks.enqueued(self.name, result.id)
        return result.id


# Per declared task: its time limit and retries, for redelivery_after().
_limits: list[tuple[float, int]] = []


def redelivery_after() -> float:
    """Seconds after which a task not acknowledged is handed out again (kombu's
    visibility timeout): longer than any declared task's message stays
    unacknowledged while its worker lives. That is its hard time limit, plus, for
    a retry, the countdown the worker holds it for (core.tasks.retry_delay); a
    shorter timeout would hand out running or waiting tasks a second time."""
    return max(
        time_limit + queueing.HARD_LIMIT_MARGIN + tasks.retry_delay(max(retries, 1))
        for time_limit, retries in _limits
    )


def task(name: str, *, retries: int, time_limit: float):
    _limits.append((time_limit, retries))

    def declare(body: Callable[..., Awaitable]) -> Task:
        @app.task(
            name=name,
            bind=True,
            max_retries=retries,
            time_limit=time_limit + queueing.HARD_LIMIT_MARGIN,
        )
        def run(self, *args, trace=None):
            # A retry is sent with the same arguments: `trace` too.
            decision = async_to_sync(tasks.attempt)(
                name,
                body,
                args,
                number=self.request.retries + 1,
                attempts=retries + 1,
                time_limit=time_limit,
                job=self.request.id,
                trace=trace,
            )
            match decision:
                case tasks.Retry(error=error, delay=delay):
                    raise self.retry(exc=error, countdown=delay) from error
                case tasks.GiveUp(error=error):
                    raise error
                case tasks.DeadLettered():
                    return None
            return decision.result

        return Task(name, retries, run)

    return declare


async def close() -> None:
    """Nothing to close: enqueue publishes from a thread, on Celery's own
    connections."""


def queue_depth() -> int:
    _check_broker()
    # Tasks are sent without a priority: they all wait in the queue's one list.
    prefix = app.conf.broker_transport_options["global_keyprefix"]
    client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5)
    try:
        return client.llen(prefix + settings.TASK_QUEUE)
    finally:
        client.close()


def main() -> int:
    _check_broker()
    app.conf.broker_transport_options = {
        **app.conf.broker_transport_options,
        "visibility_timeout": redelivery_after(),
    }
    return app.start(
        [
            # No banner: stdout carries JSON log lines only.
            "--quiet",
            "worker",
            "--pool=prefork",
            f"--concurrency={int(os.environ['WORKER_CONCURRENCY'])}",
            f"--queues={settings.TASK_QUEUE}",
            # Worker-to-worker chatter over events, which this service does not use.
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
    )
