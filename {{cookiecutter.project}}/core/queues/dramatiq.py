"""The task queue: Dramatiq, on Redis (REDIS_URL). Task bodies are coroutines.

core.queueing's contract, for Dramatiq. Plain dramatiq, without
django-dramatiq: its DB-connection middleware acts on the worker threads, while
the async ORM runs on asgiref's own thread, and its rundramatiq command starts
dramatiq's CLI, which adds a master process and relays its workers' output to
stderr. The worker here is dramatiq's Worker in the one
process core.task_worker starts, after django.setup(): it logs through Django's
LOGGING.

Messages wait in Redis in the list NAMESPACE:TASK_QUEUE, retries in the delay
queue NAMESPACE:TASK_QUEUE.DQ. A failed attempt raises dramatiq's Retry, delayed
by core.tasks.retry_delay, until the task's retries are spent; the last failure
dead-letters the message. Dramatiq's TimeLimit, a few seconds after core.tasks'
time limit, interrupts an attempt that ignores cancellation. Coroutines run on the
event loop thread of dramatiq's AsyncIO middleware, one per worker process.

A message whose worker died mid-task is handed out again by the RedisBroker's
maintenance: a worker whose heartbeat is older than heartbeat_timeout is dead,
and its unacknowledged messages go back to the queue. A worker sends its
heartbeat with each command to Redis, which a busy worker whose prefetch is full
sends only when a task ends: the timeout is the tasks' longest hard time limit
(redelivery_after), or running tasks would be handed out twice. Maintenance runs
on a random share of the commands (maintenance_chance), which is raised so that
an idle worker runs it every few seconds.

Traces (core.tracing) are set up in the worker's one process before it starts,
and flushed once it has stopped.
"""

import asyncio
import os
import signal
import threading
from collections.abc import Awaitable, Callable

import dramatiq
import redis
from django.conf import settings
from dramatiq.asyncio import async_to_sync
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.errors import ConnectionClosed
from dramatiq.middleware import AsyncIO, CurrentMessage, Retries, TimeLimit

from core import queueing, tasks, tracing
from core.database import close_databases

# The prefix of the RedisBroker's keys (its default, spelled out for queue_depth).
NAMESPACE = "dramatiq"
# Commands to Redis, out of dramatiq's million, that run the queue's maintenance
# (its default: 1000). An idle worker sends a command a second: 10 % of them is
# one maintenance every ten seconds or so, each a few cheap Redis calls.
MAINTENANCE_CHANCE = 100_000


class AttemptsExhausted(Exception):
    """The last attempt failed. core.tasks counted and logged it; dramatiq expects
    this exception (the actors' `throws`), so it dead-letters the message without
    logging the failure again."""


class Task:
    def __init__(
        self, name: str, body: Callable[..., Awaitable], retries: int, time_limit: float
    ):
        self.name = name
        self.retries = retries
        self.body = body
        self.time_limit = time_limit
        self.actor: dramatiq.Actor | None = None

    def declare(self, broker: RedisBroker) -> None:
        self.actor = dramatiq.actor(
            self.run,
            actor_name=self.name,
            queue_name=settings.TASK_QUEUE,
            broker=broker,
            max_retries=self.retries,
            time_limit=int((self.time_limit + queueing.HARD_LIMIT_MARGIN) * 1000),
            # For failures outside core.tasks.attempt (the hard time limit): the
            # backoff of core.tasks.retry_delay.
            min_backoff=int(tasks.retry_delay(1) * 1000),
            max_backoff=int(tasks.retry_delay(max(self.retries, 1)) * 1000),
            throws=(AttemptsExhausted,),
        )

    def run(self, *args, trace=None) -> None:
        """The actor, in a worker thread: runs the body on the AsyncIO middleware's
        event loop and waits for it. A retry is the same message: `trace` too."""
        message = CurrentMessage.get_current_message()
        # The Retries middleware counts the failed attempts in the message.
        number = message.options.get("retries", 0) + 1
        match async_to_sync(self.attempt)(number, message.message_id, args, trace):
            case tasks.Retry(error=error, delay=delay):
                raise dramatiq.Retry(delay=int(delay * 1000)) from error
            case tasks.GiveUp(error=error):
                raise AttemptsExhausted(self.name) from error
            case tasks.DeadLettered():
                return

    async def attempt(
        self, number: int, job: str, args: tuple, trace: dict | None
    ) -> tasks.Succeeded | tasks.Retry | tasks.GiveUp | tasks.DeadLettered:
        return await tasks.attempt(
            self.name,
            self.body,
            args,
            number=number,
            attempts=self.retries + 1,
            time_limit=self.time_limit,
            job=job,
            trace=trace,
        )

    def send(self, *args, **kwargs) -> str:
        broker()  # declares the actor
        return self.actor.send(*args, **kwargs).message_id

    async def enqueue(self, *args) -> str:
        # Sending is blocking Redis I/O: off the event loop.
        job_id = await asyncio.to_thread(self.send, *args, **tasks.trace_kwargs())
        tasks.enqueued(self.name, job_id)
        return job_id


class _Consumer(_RedisConsumer):
    """Dramatiq's Redis consumer, which also hands out again what an earlier
    consumer of its queue in this process fetched and never handed out.

    On a broken connection, dramatiq's consumer thread closes its consumer and
    starts another. What the first had fetched is in this worker's set of
    unacknowledged messages: those it had not handed out yet (its cache, which
    the restart drops) and those a fetch took whose answer the broken connection
    lost. Maintenance hands such messages out again only once the worker's
    heartbeat stops, that is never while it runs (the broker's restart test lost
    a task so). The next consumer of the queue gives back every unacknowledged
    message of this worker that no worker thread holds, before it fetches. A
    message whose acknowledgement the broken connection lost is run again: tasks
    are idempotent. Subclassed (a private class) through the broker's
    consumer_class, dramatiq's own hook for it."""

    def close(self) -> None:
        self.broker.reconcile.add(self.queue_name)
        super().close()

    def __next__(self):
        if self.queue_name in self.broker.reconcile:
            acks = f"{NAMESPACE}:__acks__.{self.broker.broker_id}.{self.queue_name}"
            try:
                fetched = {i.decode() for i in self.broker.client.smembers(acks)}
                if stranded := fetched - self.broker.handed_out:
                    self.broker.do_requeue(self.queue_name, *stranded)
            except redis.ConnectionError as error:
                raise ConnectionClosed(error) from None
            self.broker.reconcile.discard(self.queue_name)
        message = super().__next__()
        if message is not None:
            self.broker.handed_out.add(message.options["redis_message_id"])
        return message

    def ack(self, message):
        try:
            super().ack(message)
        finally:
            self.broker.handed_out.discard(message.options["redis_message_id"])

    def nack(self, message):
        try:
            super().nack(message)
        finally:
            self.broker.handed_out.discard(message.options["redis_message_id"])


class _Broker(RedisBroker):
    """The RedisBroker with _Consumer: the messages its consumers handed out and
    are not acknowledged yet, and the queues whose consumer was closed."""

    def __init__(self, **options):
        super().__init__(**options)
        self.handed_out: set[str] = set()
        self.reconcile: set[str] = set()

    @property
    def consumer_class(self):
        return _Consumer


_tasks: list[Task] = []
_broker: RedisBroker | None = None
_broker_lock = threading.Lock()


def redelivery_after() -> float:
    """Seconds without a heartbeat after which a worker is dead and its messages
    are handed out again: the longest declared task's hard time limit, and a
    margin for the heartbeat that follows its end."""
    return max(
        declared.time_limit + 2 * queueing.HARD_LIMIT_MARGIN for declared in _tasks
    )


def broker() -> RedisBroker:
    """The broker, made when first needed, with every app's tasks declared:
    importing the tasks (settings checks, migrations) needs no REDIS_URL."""
    global _broker
    if _broker is None:
        # Outside the lock: declaring a task takes it.
        queueing.declared_tasks()
    with _broker_lock:
        if _broker is None:
            new = _Broker(
                url=queueing.redis_url("Dramatiq"),
                namespace=NAMESPACE,
                heartbeat_timeout=int(redelivery_after() * 1000),
                maintenance_chance=MAINTENANCE_CHANCE,
                # Dramatiq's Prometheus middleware is left out: core.tasks
                # records the task metrics.
                middleware=[
                    CurrentMessage(),
                    AsyncIO(),
                    TimeLimit(),
                    Retries(),
                ],
            )
            for declared in _tasks:
                declared.declare(new)
            _broker = new
        return _broker


def task(name: str, *, retries: int, time_limit: float):
    def declare(body: Callable[..., Awaitable]) -> Task:
        declared = Task(name, body, retries, time_limit)
        with _broker_lock:
            _tasks.append(declared)
            if _broker is not None:
                declared.declare(_broker)
        return declared

    return declare


async def close() -> None:
    """Nothing to close: enqueue sends from a thread, on Dramatiq's own connections."""


def queue_depth() -> int:
    """Messages no worker has taken, and retries waiting for their time: the delay
    queue's messages stay in its hash until they are due, even once a worker has
    fetched them to wait in memory."""
    queue = f"{NAMESPACE}:{settings.TASK_QUEUE}"
    delay_queue = f"{queue}.DQ.msgs"
    client = redis.Redis.from_url(queueing.redis_url("Dramatiq"), socket_timeout=5)
    try:
        ready, delayed = client.pipeline().llen(queue).hlen(delay_queue).execute()
    finally:
        client.close()
    return ready + delayed


def main() -> None:
    tracing.setup(tasks_only=True)
    # A stop asked for while the worker boots is honoured once it has started.
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda signum, frame: stopping.set())
    queue_broker = broker()
    # What dramatiq's CLI emits in each worker process: TimeLimit starts its timer.
    queue_broker.emit_after("process_boot")
    # Each thread runs one task at a time; their coroutines share the event loop.
    worker = dramatiq.Worker(
        queue_broker, worker_threads=int(os.environ["WORKER_CONCURRENCY"])
    )
    worker.start()
    stopping.wait()
    # Takes no more messages, gives running tasks the timeout to finish, and hands
    # fetched but unstarted ones back to Redis.
    worker.stop(timeout=int(os.environ["WORKER_SHUTDOWN_TIMEOUT"]) * 1000)
    queue_broker.close()
    close_databases()
    tracing.shutdown()
