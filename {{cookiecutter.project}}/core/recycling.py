"""Recycles a worker whose resident memory stays at or over WORKER_MAX_RSS_MB for
WORKER_MAX_RSS_SECONDS.

CPython seldom gives freed memory back to the system: a worker that once held
thousands of connections keeps most of their memory after they close, and a slow
leak only grows. Uvicorn and Gunicorn have no memory limit for their workers, so
each worker watches its own (Granian's supervisor does it itself: bin/serve
passes --workers-max-rss, and leaves this off). A worker over the limit stops
itself with SIGTERM, the path a deploy takes (core.shutdown): its WebSockets and
event streams are told when to reconnect, readiness turns 503, its requests
finish, and its server's supervisor starts a new worker in its place.
"""

import logging
import os
import signal

from django.conf import settings

from core import metrics

logger = logging.getLogger(__name__)
MIB = 1024 * 1024

_seconds_over = 0.0
_stopping = False


def observe(resident_bytes: int, interval_seconds: float) -> None:
    """Called by core.sampler with each sample of this worker's memory."""
    global _seconds_over, _stopping
    limit = settings.WORKER_MAX_RSS_MB * MIB
    if not limit or _stopping:
        return
    _seconds_over = _seconds_over + interval_seconds if resident_bytes >= limit else 0.0
    if _seconds_over < settings.WORKER_MAX_RSS_SECONDS:
        return
    _stopping = True
    metrics.WORKER_RECYCLES.labels("memory").inc()
    logger.warning(
        "recycling this worker: its memory stayed over the limit",
        extra={
            "rss_mib": round(resident_bytes / MIB),
            "limit_mib": settings.WORKER_MAX_RSS_MB,
            "seconds": settings.WORKER_MAX_RSS_SECONDS,
            "pid": os.getpid(),
        },
    )
    os.kill(os.getpid(), signal.SIGTERM)
