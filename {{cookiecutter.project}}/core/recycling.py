"""Recycles a worker after MAX_REQUESTS requests (plus up to MAX_REQUESTS_JITTER),
or when its resident memory stays at or over WORKER_MAX_RSS_MB for
WORKER_MAX_RSS_SECONDS.

CPython seldom gives freed memory back to the system: a worker that once held
thousands of connections keeps most of their memory after they close, and a slow
leak only grows. Uvicorn and Gunicorn have no memory limit for their workers,
and their own request limit stops a worker without telling its long-lived
connections: event streams are cut after the graceful timeout, WebSockets get
1012 with no reconnect delay. So each of their workers counts and watches
itself, and stops itself with SIGTERM, the path a deploy takes (core.shutdown):
its WebSockets and event streams are told when to reconnect, readiness turns
503, its requests finish, and its server's supervisor starts a new worker in its
place. (Granian's supervisor recycles by memory and age itself, with SIGTERM
too: bin/serve passes --workers-max-rss, and leaves this off.)
"""

import logging
import os
import random
import signal
from functools import cache

from django.conf import settings

from core import metrics

logger = logging.getLogger(__name__)
MIB = 1024 * 1024

_requests = 0
_seconds_over = 0.0
_stopping = False


@cache
def request_limit() -> int:
    """This worker's own limit, 0 for none: the jitter keeps workers from
    being recycled together."""
    if not settings.MAX_REQUESTS:
        return 0
    # Spreads recycling out; nothing here is a secret.
    return settings.MAX_REQUESTS + random.randint(0, settings.MAX_REQUESTS_JITTER)  # noqa: S311


def count_request() -> None:
    """Called for each HTTP request and WebSocket (core.connections)."""
    global _requests
    _requests += 1
    if _requests == request_limit():
        _stop("requests", requests=_requests)


def observe(resident_bytes: int, interval_seconds: float) -> None:
    """Called by core.sampler with each sample of this worker's memory."""
    global _seconds_over
    limit = settings.WORKER_MAX_RSS_MB * MIB
    if not limit:
        return
    _seconds_over = _seconds_over + interval_seconds if resident_bytes >= limit else 0.0
    if _seconds_over >= settings.WORKER_MAX_RSS_SECONDS:
        _stop(
            "memory",
            rss_mib=round(resident_bytes / MIB),
            limit_mib=settings.WORKER_MAX_RSS_MB,
            seconds=settings.WORKER_MAX_RSS_SECONDS,
        )


def _stop(reason: str, **facts) -> None:
    global _stopping
    if _stopping:
        return
    _stopping = True
    metrics.WORKER_RECYCLES.labels(reason).inc()
    logger.warning(
        "recycling this worker", extra={"reason": reason, "pid": os.getpid(), **facts}
    )
    os.kill(os.getpid(), signal.SIGTERM)
