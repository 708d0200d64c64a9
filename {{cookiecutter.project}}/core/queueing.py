"""The contract between this service and its task queue library's adapter.

core/queue.py is the chosen library's adapter, the only module that knows the
library. Every adapter offers `Adapter` below; what they share is here, so that
each keeps only what is specific to its library: the process that runs the
library's worker, the margin of the library's hard time limit, and the check
that Redis, where some libraries keep their queue, is configured.

`python -m core.queueing` is that process (WORKER_COMMAND, which core.task_worker
starts): it sets Django up, imports every app's `tasks` module, so that the
tasks are declared without core naming the apps, and runs the adapter's main().
"""

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import Protocol, runtime_checkable

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import Error as DatabaseError
from django.db import close_old_connections

logger = logging.getLogger(__name__)

WORKER_COMMAND = [sys.executable, "-m", "core.queueing"]
# A library's own time limit runs this much longer than core.tasks' limit, so
# that the task's failure is counted and logged first.
HARD_LIMIT_MARGIN = 5.0
# How often the next attempt of a failed one is enqueued again while the
# database does not take it (enqueue_retry()).
RETRY_ENQUEUE_SECONDS = 1.0


@runtime_checkable
class Task(Protocol):
    """A declared task: `await enqueue(*args)` hands it to the broker and returns
    the job's id."""

    name: str
    retries: int

    async def enqueue(self, *args) -> str: ...


@runtime_checkable
class Adapter(Protocol):
    """What core.queue offers; core.task_worker and the apps use nothing else."""

    def task(
        self, name: str, *, retries: int, time_limit: float
    ) -> Callable[[Callable[..., Awaitable]], Task]:
        """Declares a coroutine a task, run through core.tasks.attempt, tried
        `retries` more times when an attempt fails, `time_limit` seconds each."""

    def queue_depth(self) -> int:
        """Tasks waiting, read from the broker."""

    async def close(self) -> None:
        """Closes what enqueue opened on the running event loop: core.lifespan and
        the task worker's relay call it before their loop ends."""

    def main(self) -> int | None:
        """Runs the library's worker in this process until a signal stops it;
        returns the exit status (None: 0)."""


def redis_url(library: str) -> str:
    """REDIS_URL, for a library whose broker is Redis: without it, it must not
    start, nor quietly try a default broker."""
    if not settings.REDIS_URL:
        raise ImproperlyConfigured(f"REDIS_URL is not set: {library}'s broker is Redis")
    return settings.REDIS_URL


def declared_tasks() -> dict[str, Task]:
    """Every task the apps declare, by name: the Task objects of their `tasks`
    modules (imported here, as the worker imports them)."""
    from django.apps import apps
    from django.utils.module_loading import autodiscover_modules

    autodiscover_modules("tasks")
    found = {}
    for config in apps.get_app_configs():
        module = sys.modules.get(f"{config.name}.tasks")
        for value in vars(module).values() if module else ():
            if isinstance(value, Task):
                found[value.name] = value
    return found


def run_worker() -> int | None:
    import django
    from django.utils.module_loading import autodiscover_modules

    django.setup()
    autodiscover_modules("tasks")
    # Imported once Django is set up: some libraries need the app registry.
    from core import queue

    return queue.main()


async def enqueue_retry(push: Callable[[], Awaitable], task: str, attempt: int) -> None:
    """Enqueues attempt `attempt` of `task` by `push`, once the database takes it:
    where the database is the broker (django-q2, Django's framework), the next
    attempt is a row written by the failed one, and a failed attempt that ended
    without it would be finished by the library, its job lost. The worker waits
    for the database as long as it is away, within the library's own limits."""
    while True:
        try:
            await push()
            return
        except DatabaseError:
            logger.warning(
                "task retry not enqueued yet: the database is unavailable",
                extra={"task": task, "attempt": attempt},
                exc_info=True,
            )
        # A connection the database dropped is not used again.
        await sync_to_async(close_old_connections)()
        await asyncio.sleep(RETRY_ENQUEUE_SECONDS)


if __name__ == "__main__":
    sys.exit(run_worker())
