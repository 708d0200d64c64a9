"""ASGI lifespan: Uvicorn and Granian send it, and Django's handler alone refuses it."""

import asyncio
import logging
import os

import django
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings

from core import (
    cache,
    collector,
    handler,
    health,
    metrics,
{%- if cookiecutter.tasks != "none" %}
    queue,
{%- endif %}
    reads,
    sampler,
    shutdown,
    tracing,
)
from core.database import close_databases

logger = logging.getLogger(__name__)
_sampling: asyncio.Task | None = None


async def _startup() -> None:
    global _sampling
    # First, so that what startup does is traced; here, in the worker process
    # the server has forked or spawned (core.tracing).
    tracing.setup()
    collector.configure()
    get_channel_layer()  # fails here, not on the first request, if misconfigured
    shutdown.install()
    _sampling = asyncio.create_task(sampler.run(), name="metrics-sampler")
    metrics.worker_started()
    logger.info(
        "started",
        extra={
            "version": settings.SERVICE_VERSION,
            "server": settings.SERVER,
            "django": django.get_version(),
            "pid": os.getpid(),
        },
    )


async def _shutdown() -> None:
    if _sampling is not None:
        _sampling.cancel()
    # First, while they still have their pools and clients: the requests still
    # running end (a bounded wait, for their spans; Granian can get here before
    # the app has returned for a client that had gone).
    await tracing.spans_ended()
    layer = get_channel_layer()
    if hasattr(layer, "close_pools"):
        await layer.close_pools()
    await reads.close()
{%- if cookiecutter.tasks != "none" %}
    await queue.close()
{%- endif %}
    await cache.close()
    await health.close()
    # The request threads' connections first: on PostgreSQL they go back to the
    # pools that close_databases() then closes.
    await asyncio.to_thread(handler.close_connections)
    await sync_to_async(close_databases)()
    metrics.worker_stopped()
    logger.info("stopped", extra={"pid": os.getpid()})
    # Last: the requests' spans have ended (above). In a thread, as the export
    # is a blocking HTTP request.
    await asyncio.to_thread(tracing.shutdown)


async def lifespan(scope, receive, send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            try:
                await _startup()
            except Exception as exc:
                logger.exception("startup failed")
                await send({"type": "lifespan.startup.failed", "message": str(exc)})
                return
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await _shutdown()
            await send({"type": "lifespan.shutdown.complete"})
            return
