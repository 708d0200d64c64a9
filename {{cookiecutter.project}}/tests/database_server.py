"""What the tests of a database server's read path (test_postgresql.py,
test_mysql.py) check alike: a database that could not serve answers 503 with
Retry-After and counts why, and conditions are waited for within a bound."""

import asyncio
import time

from prometheus_client import REGISTRY


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
