"""Liveness never looks at dependencies; readiness checks each one, quickly, and
reports it without taking the instance out of traffic for a shared outage."""

import asyncio

import pytest
import redis
from django.conf import settings

pytestmark = pytest.mark.django_db(transaction=True)


async def test_liveness(async_client):
    response = await async_client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readiness_checks_the_database_and_redis_when_configured(
    async_client, settings
):
    response = await async_client.get("/readyz")
    assert response.status_code == 200
    expected = {"database": "ok"}
    if settings.REDIS_URL:
        expected["redis"] = "ok"
    assert response.json() == {"status": "ready", "checks": expected}


async def test_unreachable_redis_degrades_but_keeps_the_instance_in(
    async_client, settings
):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    response = await async_client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {
        "status": "degraded",
        "checks": {"database": "ok", "redis": "unavailable"},
    }


async def test_a_hanging_dependency_is_reported_after_the_timeout(
    async_client, settings
):
    async def accept_and_stay_silent(reader, writer):
        await reader.read()  # until the client gives up and closes
        writer.close()

    server = await asyncio.start_server(accept_and_stay_silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    settings.READINESS_TIMEOUT = 0.3
    settings.REDIS_URL = f"redis://127.0.0.1:{port}/0"
    async with server, asyncio.timeout(5):
        response = await async_client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["status"] == "degraded"
    assert response.json()["checks"]["redis"] == "unavailable"


@pytest.mark.skipif(not settings.REDIS_URL, reason="needs Redis (REDIS_URL)")
async def test_readiness_pings_redis_on_the_connection_it_already_has(async_client):
    """Probes come every few seconds from each pod: each must not cost Redis a
    new connection (accepted, authenticated, closed)."""
    server = redis.Redis.from_url(settings.REDIS_URL)
    await async_client.get("/readyz")  # the first may open it
    before = server.info("stats")["total_connections_received"]
    for _ in range(5):
        response = await async_client.get("/readyz")
        assert response.json()["checks"]["redis"] == "ok"
    after = server.info("stats")["total_connections_received"]
    server.close()
    assert after == before
