"""The task worker's supervisor: runs the queue library's worker, serves its metrics.

bin/worker starts it. The library's worker (core.queueing.WORKER_COMMAND) runs as a
child process in a process group of its own; SIGTERM and SIGINT reach it once,
from here, and it stops taking tasks and lets the running ones finish (within
WORKER_SHUTDOWN_TIMEOUT) before this process exits with its status. A worker
that ends unasked has failed, whatever its status: this process then exits 1 (or
as the signal that killed it), so that systemd and the kubelet restart it. Meanwhile
this process answers HTTP on WORKER_METRICS_HOST:WORKER_METRICS_PORT:
  /metrics  what the worker's processes wrote to METRICS_DIR (core.exposition
            retires those that died), the queue depth, read from the broker at
            each scrape, and the dead-lettered tasks (manage.py dead_letters),
            read from the database;
  /healthz  200 while the worker runs: the liveness probe.
It also runs core.outbox's relay: the tasks the broker did not take when their
write committed are sent again every OUTBOX_RELAY_SECONDS.

Environment (defaults in brackets): WORKER_CONCURRENCY [2], WORKER_SHUTDOWN_TIMEOUT
[60], WORKER_METRICS_HOST [127.0.0.1], WORKER_METRICS_PORT [9500], METRICS_DIR [a
new temporary directory; a given one is emptied, as bin/serve does].
"""

import asyncio
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import django

# The name its log lines have always carried: log queries select them by it.
logger = logging.getLogger("core.worker")


def prepare_metrics_directory() -> str:
    """The worker processes' metrics directory, without a previous run's files:
    a process with a reused pid would carry on from them."""
    directory = os.environ.get("METRICS_DIR")
    if directory:
        Path(directory).mkdir(parents=True, exist_ok=True)
        for stale in Path(directory).glob("*.db"):
            stale.unlink()
    else:
        directory = tempfile.mkdtemp(prefix="worker-metrics-")
    # Before prometheus_client is imported, here and in the worker's processes.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    return directory


class QueueDepth:
    """django_task_queue_depth: read from the broker when Prometheus scrapes."""

    def __init__(self, queue_name: str):
        self.queue_name = queue_name

    def _family(self):
        from prometheus_client.core import GaugeMetricFamily

        return GaugeMetricFamily(
            "django_task_queue_depth",
            "Tasks waiting in the broker for a worker, by queue.",
            labels=["queue"],
        )

    def describe(self):
        yield self._family()

    def collect(self):
        from core import queue

        try:
            depth = queue.queue_depth()
        except Exception:
            # No sample rather than a wrong one; the log says why.
            logger.warning("could not read the queue depth", exc_info=True)
            return
        family = self._family()
        family.add_metric([self.queue_name], depth)
        yield family


class DeadLetters:
    """django_task_dead_letters: the tasks dead-lettered and not yet retried or
    dropped (core.tasks), by task, read from the database when Prometheus scrapes.
    A gauge rather than only django_tasks_dead_lettered_total: it stays up until
    someone deals with them, however long ago they came."""

    def _family(self):
        from prometheus_client.core import GaugeMetricFamily

        return GaugeMetricFamily(
            "django_task_dead_letters",
            "Dead-lettered tasks waiting for manage.py dead_letters, by task.",
            labels=["task"],
        )

    def describe(self):
        yield self._family()

    def collect(self):
        from django.db import connection
        from django.db.models import Count

        from core import queueing
        from core.models import TaskDelivery

        dead = TaskDelivery.objects.exclude(dead_lettered_at=None)
        try:
            counts = dict(dead.values_list("task").annotate(Count("id")))
        except Exception:
            logger.warning("could not count the dead letters", exc_info=True)
            return
        finally:
            # Each scrape comes in a thread of its own: its connection goes back now.
            connection.close()
        family = self._family()
        # Every declared task has its sample, 0 when none is dead-lettered: the
        # series exists before the first dead letter, for the dashboard.
        for task in sorted(queueing.declared_tasks().keys() | counts.keys()):
            family.add_metric([task], counts.get(task, 0))
        yield family


def serve_http(worker: subprocess.Popen, directory: str, queue_name: str):
    from prometheus_client import CONTENT_TYPE_LATEST

    from core import exposition

    collectors = [QueueDepth(queue_name), DeadLetters()]

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/healthz":
                alive = worker.poll() is None
                body = b'{"status": "ok"}' if alive else b'{"status": "stopped"}'
                self._send(200 if alive else 503, body, "application/json")
            elif self.path == "/metrics":
                body = exposition.render(directory, collectors)
                self._send(200, body, CONTENT_TYPE_LATEST)
            else:
                self._send(404, b'{"error": "not_found"}', "application/json")

        def _send(self, status: int, body: bytes, content_type: str):
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format, *args):
            # Probes and scrapes every few seconds: not worth a log line each.
            pass

    address = (
        os.environ.get("WORKER_METRICS_HOST", "127.0.0.1"),
        int(os.environ.get("WORKER_METRICS_PORT", "9500")),
    )
    server = ThreadingHTTPServer(address, Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def relay_pending_tasks(stopping: threading.Event) -> None:
    """core.outbox's relay, every OUTBOX_RELAY_SECONDS until the worker stops, on
    one event loop that it closes then, with its database connections."""
    from django.conf import settings
    from django.db import close_old_connections, connections

    from core import outbox, queue

    try:
        with asyncio.Runner() as runner:
            while not stopping.wait(settings.OUTBOX_RELAY_SECONDS):
                try:
                    if sent := outbox.relay(runner):
                        logger.info("relayed kept tasks", extra={"count": sent})
                except Exception:
                    # The database may be down: the next round tries again.
                    logger.warning("relay failed", exc_info=True)
                finally:
                    close_old_connections()
            runner.run(queue.close())
    finally:
        connections.close_all()


def main() -> int:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ.setdefault("WORKER_CONCURRENCY", "2")
    os.environ.setdefault("WORKER_SHUTDOWN_TIMEOUT", "60")
    directory = prepare_metrics_directory()
    django.setup()
    from django.conf import settings

    from core import queueing
    from core.database import close_databases

    # The command is a constant, never input.
    worker = subprocess.Popen(queueing.WORKER_COMMAND, process_group=0)  # noqa: S603
    asked_to_stop = threading.Event()

    def forward(signum, frame):
        asked_to_stop.set()
        worker.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, forward)
    try:
        server = serve_http(worker, directory, settings.TASK_QUEUE)
    except OSError:
        worker.kill()
        raise
    stopping = threading.Event()
    relay = threading.Thread(target=relay_pending_tasks, args=(stopping,))
    relay.start()
    logger.info(
        "worker started",
        extra={"pid": worker.pid, "queue": settings.TASK_QUEUE, "metrics": directory},
    )
    status = worker.wait()
    stopping.set()
    relay.join()
    server.shutdown()
    # Scrapes that read the queue depth from the database opened a pool.
    close_databases()
    if not asked_to_stop.is_set():
        # A library may end with 0 on an error it cannot recover from (Celery's
        # "Unrecoverable error", when its broker's connection breaks at the wrong
        # moment): a worker that ends unasked has failed, so that systemd
        # (Restart=on-failure) and the kubelet start it again.
        logger.error("worker ended without being asked to", extra={"status": status})
        return 128 - status if status < 0 else status or 1
    logger.info("worker stopped", extra={"status": status})
    # A worker killed by a signal exits as a shell would report it.
    return 128 - status if status < 0 else status


if __name__ == "__main__":
    sys.exit(main())
