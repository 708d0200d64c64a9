"""Liveness and readiness endpoints for probes and load balancers."""

import asyncio
import logging
import weakref

import redis.asyncio as redis
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection
from django.http import JsonResponse

from core import shutdown

logger = logging.getLogger(__name__)


async def healthz(request):
    """Liveness: the process answers. No dependency is checked, so a database
    outage does not make the orchestrator restart every replica."""
    return JsonResponse({"status": "ok"})


def _ping_database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


async def _check_database() -> None:
    await sync_to_async(_ping_database)()


# One client per event loop (a client's connections belong to the loop that
# opened them) and URL: a probe every few seconds, in each pod, pings on the
# connection the last one used instead of opening and closing one each time.
_CLIENTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _redis() -> redis.Redis:
    timeout = settings.READINESS_TIMEOUT
    clients = _CLIENTS.setdefault(asyncio.get_running_loop(), {})
    key = (settings.REDIS_URL, timeout)
    if key not in clients:
        clients[key] = redis.Redis.from_url(
            settings.REDIS_URL, socket_connect_timeout=timeout, socket_timeout=timeout
        )
    return clients[key]


async def _check_redis() -> None:
    await _redis().ping()


async def close() -> None:
    """Closes this loop's readiness clients (ASGI lifespan shutdown, end of tests)."""
    for client in _CLIENTS.pop(asyncio.get_running_loop(), {}).values():
        await client.aclose()


async def _status(name: str, check) -> str:
    try:
        async with asyncio.timeout(settings.READINESS_TIMEOUT):
            await check()
    except Exception:
        logger.warning("readiness check failed", extra={"check": name}, exc_info=True)
        return "unavailable"
    return "ok"


async def readyz(request):
    """Readiness: should this instance get traffic?

    A stopping worker is not ready (503), so that balancers drain it. The shared
    dependencies, the database and Redis, are checked at once (READINESS_TIMEOUT
    each) and reported, but do not make the instance unready: every instance sees
    the same outage, and taking all of them out of the Service or the upstream
    would turn fast 503s with Retry-After (core.api) and cache misses (core.cache)
    into refused connections for every request, those that need neither included.
    "degraded" says that one failed; a deploy waits for "ready" (Ansible's rollout
    does), so that a release that cannot reach them goes no further."""
    if shutdown.is_stopping():
        return JsonResponse({"status": "stopping", "checks": {}}, status=503)
    checks = {"database": _check_database}
    if settings.REDIS_URL:
        checks["redis"] = _check_redis
    statuses = await asyncio.gather(*(_status(name, c) for name, c in checks.items()))
    ready = all(status == "ok" for status in statuses)
    return JsonResponse(
        {
            "status": "ready" if ready else "degraded",
            "checks": dict(zip(checks, statuses, strict=True)),
        }
    )
