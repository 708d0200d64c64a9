"""The task queue: arq, on Redis (REDIS_URL). Tasks are coroutines end to end.

The adapter of core.queueing's contract for arq. Jobs wait in the sorted set
named TASK_QUEUE. A failed attempt raises arq's Retry until the task's retries
are spent; arq's own job timeout, a few seconds after core.tasks' time limit,
stops a job that ignores cancellation.

A job whose worker died mid-task stays in the queue, marked in progress by a key
that expires after the longest job timeout and 10 seconds (arq's
in_progress_timeout): then a worker runs it again, its job_try one higher.

Jobs are stored as JSON, not arq's default pickle: whoever can write to Redis
must not run code in the worker. Task arguments are ints and strings.

arq's worker ends when Redis goes away under it (a restart, a failover): main()
then starts a new one in the same process, as soon as Redis answers again, rather
than leave the task worker down until its supervisor restarts it. The jobs the
lost worker had marked in progress and not finished (marked just before Redis
went, or finished while it was away) are run by no process any more: main()
deletes their in-progress keys before the new worker starts, so that they run
again within seconds of Redis's return, not once the keys expire minutes later.

Traces (core.tracing) are set up in the worker's one process before it starts,
and flushed once it has stopped.
"""

import asyncio
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable

import redis
from arq import Retry, create_pool
from arq.connections import ArqRedis, RedisSettings
from arq.constants import in_progress_key_prefix
from arq.worker import Function, Worker, func
from django.conf import settings

from core import queueing, tasks, tracing

logger = logging.getLogger(__name__)
# Seconds before a new worker, after arq's lost Redis: doubled each time, at most
# the last.
RESTART_DELAYS = (1, 2, 4, 8)
# Seconds between two looks at the queue. arq starts at most max_jobs jobs per
# look, however short they are: at its default (0.5 s) and WORKER_CONCURRENCY 2,
# four tasks a second. At 0.1 s, ten looks a second per worker, each a couple of
# Redis commands, for WORKER_CONCURRENCY x 10 tasks a second.
POLL_SECONDS = 0.1
_functions: list[Function] = []
# One connection pool per event loop: a pool cannot be shared between loops.
_pools: dict[asyncio.AbstractEventLoop, ArqRedis] = {}


def _job_to_json(job: dict) -> bytes:
    return json.dumps(job, separators=(",", ":")).encode()


JOB_SERIALIZATION = {"job_serializer": _job_to_json, "job_deserializer": json.loads}


def _redis_settings() -> RedisSettings:
    """REDIS_URL as redis-py reads it for the cache and the channel layer. arq's
    own reading leaves an ACL user's percent-encoded name and password encoded,
    and with rediss:// does not check the server's name against its certificate."""
    url = queueing.redis_url("arq")
    redis_settings = RedisSettings.from_dsn(url)
    credentials = redis.connection.parse_url(url)
    redis_settings.username = credentials.get("username")
    redis_settings.password = credentials.get("password")
    redis_settings.ssl_check_hostname = redis_settings.ssl
    return redis_settings


async def _pool() -> ArqRedis:
    loop = asyncio.get_running_loop()
    if loop not in _pools:
        _pools[loop] = await create_pool(
            _redis_settings(),
            default_queue_name=settings.TASK_QUEUE,
            **JOB_SERIALIZATION,
        )
    return _pools[loop]


async def close() -> None:
    pool = _pools.pop(asyncio.get_running_loop(), None)
    if pool is not None:
        await pool.aclose()


class Task:
    def __init__(self, name: str, retries: int):
        self.name = name
        self.retries = retries

    async def enqueue(self, *args) -> str:
        job = await (await _pool()).enqueue_job(
            self.name, *args, **tasks.trace_kwargs()
        )
        tasks.enqueued(self.name, job.job_id)
        return job.job_id


def task(name: str, *, retries: int, time_limit: float):
    def declare(body: Callable[..., Awaitable]) -> Task:
        async def run(ctx: dict, *args, trace=None):
            # A retry runs the same job again: `trace` too.
            decision = await tasks.attempt(
                name,
                body,
                args,
                number=ctx["job_try"],
                attempts=retries + 1,
                time_limit=time_limit,
                job=ctx["job_id"],
                trace=trace,
            )
            match decision:
                case tasks.Retry(error=error, delay=delay):
                    raise Retry(defer=delay) from error
                case tasks.GiveUp(error=error):
                    raise error
                case tasks.DeadLettered():
                    return None
            return decision.result

        _functions.append(
            func(
                run,
                name=name,
                # arq counts a delivery whose worker died as a try: room for
                # core.tasks' bound on those, which dead-letters the job.
                max_tries=retries + 1 + settings.TASK_MAX_DELIVERIES,
                timeout=time_limit + queueing.HARD_LIMIT_MARGIN,
            )
        )
        return Task(name, retries)

    return declare


def _redis() -> redis.Redis:
    """A client of its own, for a command outside arq's worker and pool."""
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5)


def queue_depth() -> int:
    with _redis() as client:
        return client.zcard(settings.TASK_QUEUE)


def main() -> None:
    tracing.setup(tasks_only=True)
    stopping = threading.Event()
    failures = 0
    stranded: dict[str, float] = {}
    while not stopping.is_set():
        asyncio.set_event_loop(loop := asyncio.new_event_loop())
        worker = _worker()
        try:
            _release(stranded, worker.in_progress_timeout_s)
            worker.run()
            break  # stopped by SIGTERM or SIGINT
        except redis.exceptions.RedisError as error:
            stranded.update(worker.stranded())
            delay = RESTART_DELAYS[min(failures, len(RESTART_DELAYS) - 1)]
            failures += 1
            logger.warning(
                "worker lost Redis: starting a new one",
                extra={"error": repr(error), "in_seconds": delay},
            )
        finally:
            loop.close()
        # The worker's own handlers went with its loop.
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda signum, frame: stopping.set())
        stopping.wait(delay)
    tracing.shutdown()


class _Worker(Worker):
    """arq's Worker, which also keeps when it marked each job it runs in progress.

    arq leaves a job its worker lost Redis under marked in progress until the mark
    expires; which jobs those are, and whether their marks are still the ones
    this worker set, only the worker can tell (arq has no hook for either).
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        # Job id: a monotonic time no later than arq set the job's mark.
        self.marked: dict[str, float] = {}

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        before = time.monotonic()
        try:
            await super().start_jobs(job_ids)
        finally:
            # Also when Redis failed after some of them were started.
            self.marked = {job: self.marked.get(job, before) for job in self.tasks}

    def stranded(self) -> dict[str, float]:
        """The jobs marked and not finished: their task failed on a Redis
        command, or never ended (the loop they ran on is closed after this).
        A job that ended finished in Redis, whether it succeeded or not."""
        return {
            job: self.marked[job]
            for job, task in self.tasks.items()
            if not task.done() or task.cancelled() or task.exception() is not None
        }


def _release(stranded: dict[str, float], mark_seconds: float) -> None:
    """Deletes the in-progress marks of the jobs a lost worker left, while they
    can only be that worker's own (set less than `mark_seconds` ago): a later mark
    is another worker's, which runs the job. Keeps `stranded` if Redis fails."""
    now = time.monotonic()
    jobs = [job for job, marked in stranded.items() if now < marked + mark_seconds]
    if jobs:
        with _redis() as client:
            client.delete(*(in_progress_key_prefix + job for job in jobs))
        logger.warning(
            "jobs the lost worker held run again", extra={"jobs": sorted(jobs)}
        )
    stranded.clear()


def _worker() -> _Worker:
    return _Worker(
        functions=_functions,
        queue_name=settings.TASK_QUEUE,
        redis_settings=_redis_settings(),
        **JOB_SERIALIZATION,
        max_jobs=int(os.environ["WORKER_CONCURRENCY"]),
        poll_delay=POLL_SECONDS,
        job_completion_wait=int(os.environ["WORKER_SHUTDOWN_TIMEOUT"]),
        # Failures are counted and logged by core.tasks; results are not read.
        keep_result=0,
        log_results=False,
    )
