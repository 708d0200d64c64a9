"""What the tests of a database server's read path (test_postgresql.py,
test_mysql.py) check alike: a database that could not serve answers 503 with
Retry-After and counts why (a busy pool, for one), and conditions are waited
for within a bound."""

import asyncio
import time

from prometheus_client import REGISTRY

from config.asgi import application
from tests.asgi import request


def unavailable(reason: str) -> float:
    value = REGISTRY.get_sample_value("django_db_unavailable_total", {"reason": reason})
    return value or 0


def assert_retry_later(status: int, headers: dict, body: dict) -> None:
    """The answer of a database that could not serve: 503, retry in a second."""
    assert (status, body["error"], headers["retry-after"]) == (
        503,
        "database_unavailable",
        "1",
    )


async def until(count, wanted: int, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while await count() != wanted:
        assert time.monotonic() < deadline, f"not {wanted} after {seconds} s"
        await asyncio.sleep(0.02)


async def assert_a_busy_pool_answers_503(held) -> None:
    """While `held` (an async context manager) holds the only connection of a
    pool whose timeout is 0.5 s, a read waits that long, no longer than a bounded
    while, and answers 503; once it is given back, reads are served."""
    before = unavailable("pool_timeout")
    async with held:
        started = time.monotonic()
        status, headers, body = await request(application, "GET", "/api/items")
        waited = time.monotonic() - started
    assert_retry_later(status, headers, body)
    assert 0.5 <= waited < 10
    assert unavailable("pool_timeout") == before + 1
    assert (await request(application, "GET", "/api/items"))[0] == 200
