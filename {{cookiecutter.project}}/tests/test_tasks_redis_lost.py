"""arq's worker losing Redis mid-task, on the real worker, database and Redis.

Its own module: the worker here reaches Redis through a relay the test cuts, and
the worker of tests/test_tasks.py would take the job too. A job's task is held
mid-task, Redis cut under the worker, and the task let finish: arq cannot record
that, and leaves the job marked in progress until the mark expires, minutes later
(core.queue). The worker started once Redis is back must run it again at once,
and the change is still recorded once.
"""

import asyncio
import contextlib
import socket
import threading
import uuid
from urllib.parse import urlsplit

import pytest
import redis
from arq.constants import in_progress_key_prefix
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connections

from core.database import close_databases
from items.tasks import record_change
from tests.test_tasks import (
    WAIT,
    change_rows,
    delivery,
    eventually,
    lock_item_changes,
    start_worker,
    stop_worker,
    worker_database_url,
)

pytestmark = pytest.mark.django_db(transaction=True)
SUCCEEDED = ("django_tasks_succeeded_total", (("task", record_change.name),))


class Relay:
    """Relays TCP connections from a port of its own to Redis until cut(): then
    it closes every connection it relays and those that come, until restore().

    Written here because the well-kept fault proxy (Toxiproxy) is a server of its
    own, which the service's test machines do not have.
    """

    def __init__(self, redis_url: str):
        self.upstream = urlsplit(redis_url)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.open = threading.Event()
        self.open.set()
        self.lock = threading.Lock()
        self.sockets: set[socket.socket] = set()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        credentials, _, _ = self.upstream.netloc.rpartition("@")
        netloc = f"{credentials}@" if credentials else ""
        return self.upstream._replace(netloc=f"{netloc}127.0.0.1:{self.port}").geturl()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            if not self.open.is_set():
                client.close()
                continue
            server = socket.create_connection(
                (self.upstream.hostname, self.upstream.port or 6379)
            )
            with self.lock:
                self.sockets |= {client, server}
            for source, sink in ((client, server), (server, client)):
                threading.Thread(
                    target=self._pump, args=(source, sink), daemon=True
                ).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            self._close(source, sink)

    def _close(self, *sockets: socket.socket) -> None:
        for sock in sockets:
            with contextlib.suppress(OSError):  # already shut
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def cut(self) -> None:
        self.open.clear()
        with self.lock:
            sockets, self.sockets = self.sockets, set()
        self._close(*sockets)

    def restore(self) -> None:
        self.open.set()

    def close(self) -> None:
        self.cut()
        self.listener.close()


@pytest.fixture
def relay():
    if not settings.REDIS_URL:
        pytest.fail("the test needs Redis (REDIS_URL): it is the broker")
    relay = Relay(settings.REDIS_URL)
    yield relay
    relay.close()


@pytest.fixture
def worker_log(django_db_blocker, tmp_path, relay):
    """bin/worker, reaching Redis through the relay; what it writes, in a file."""
    with django_db_blocker.unblock():
        database_url = worker_database_url()
    log = tmp_path / "worker.log"
    with log.open("w") as output:
        worker = start_worker(
            database_url,
            tmp_path / "metrics",
            output,
            REDIS_URL=relay.url,
            WORKER_CONCURRENCY="1",
        )
        yield worker, log
        relay.restore()
        stop_worker(worker)
    with django_db_blocker.unblock():
        asyncio.run(sync_to_async(connections.close_all)())
        close_databases()


def broker():
    """Redis itself, not through the relay."""
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5)


def marked_for(job: str) -> float:
    """Seconds the job's in-progress mark has left, 0 if it has none."""
    with broker() as client:
        return max(client.pttl(in_progress_key_prefix + job), 0) / 1000


def queued(job: str) -> bool:
    with broker() as client:
        return client.zscore(settings.TASK_QUEUE, job) is not None


async def test_a_job_whose_worker_lost_redis_mid_task_runs_again_once_it_is_back(
    worker_log, relay
):
    worker, log = worker_log
    change_id = str(uuid.uuid4())
    lock = await asyncio.to_thread(lock_item_changes)
    try:
        job = await record_change.enqueue(424248, "item.updated", change_id)
        # Its delivery's row is written; its insert waits for the lock.
        await eventually(lambda: asyncio.to_thread(delivery, job))
        relay.cut()
    finally:
        lock.close()
    # The task ends while Redis is away, and the worker with it.
    await eventually(lambda: asyncio.to_thread(lambda: "lost Redis" in log.read_text()))
    assert await asyncio.to_thread(queued, job)
    # Left as arq leaves it, it would wait for the mark to expire.
    assert await asyncio.to_thread(marked_for, job) > WAIT
    relay.restore()

    async def finished():
        return not await asyncio.to_thread(queued, job)

    await eventually(finished)
    assert await asyncio.to_thread(change_rows, change_id) == 1
    # Run twice: before Redis went, and again once it was back.
    assert await asyncio.to_thread(lambda: worker.samples().get(SUCCEEDED)) == 2
