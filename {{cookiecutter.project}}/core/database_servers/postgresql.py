"""What the service knows of PostgreSQL's driver beyond Django's backend: the
asyncio connections of core.reads (psycopg 3's AsyncConnectionPool) and the
driver's errors that mean the database could not serve (core.database).

Installed as core/database_server.py by the template for services generated
with PostgreSQL; core/database_servers/mysql.py is the same contract on MySQL.
"""

from contextlib import asynccontextmanager

import psycopg
from django.db import connections
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from core import database


def _configure_factory(wrapper):
    async def configure(connection) -> None:
        # What Django's backend does to each new connection (_configure_timezone):
        # the session's time zone is the one Django expects values in.
        wanted = wrapper.timezone_name
        if wanted and connection.info.parameter_status("TimeZone") != wanted:
            await connection.execute(wrapper.ops.set_time_zone_sql(), [wanted])

    return configure


def new_pool(alias: str) -> AsyncConnectionPool:
    """A pool for `alias`, not open yet."""
    wrapper = connections[alias]
    # Django's own connection parameters: the same server, credentials, adapters
    # (time zone aware loaders) and statement timeout as its synchronous pool.
    params = wrapper.get_connection_params()
    server_side = wrapper.settings_dict["OPTIONS"].get("server_side_binding") is True
    params["cursor_factory"] = (
        psycopg.AsyncCursor if server_side else psycopg.AsyncClientCursor
    )
    params["autocommit"] = True
    # The sizes and the wait of Django's pool (config/settings.py), and a check
    # like its own (core.database.pool_check), asynchronous.
    options = dict(wrapper.settings_dict["OPTIONS"].get("pool", {}))

    async def check(connection) -> None:
        if not database.dropped(connection):
            return
        try:
            await AsyncConnectionPool.check_connection(connection)
        except Exception:
            await found.check()
            raise

    options["check"] = check
    found = AsyncConnectionPool(
        kwargs=params,
        **options,
        configure=_configure_factory(wrapper),
        name=f"{alias}-async",
        open=False,
    )
    return found


async def open_pool(found: AsyncConnectionPool) -> None:
    if found.closed:
        await found.open()  # safe when several requests open it at once


def is_open(found: AsyncConnectionPool) -> bool:
    return not found.closed


async def close_pool(found: AsyncConnectionPool) -> None:
    await found.close()


def stats(found: AsyncConnectionPool) -> dict:
    """psycopg_pool's get_stats(), which core.metrics.observe_pool reads."""
    return found.get_stats()


@asynccontextmanager
async def borrow(found: AsyncConnectionPool):
    """A connection for one statement, within DATABASE_POOL_TIMEOUT (PoolTimeout).
    Given back also when the caller is cancelled: psycopg then cancels the
    statement on the server."""
    async with found.connection() as connection:
        yield connection


async def run(connection, sql: str, params) -> list[tuple]:
    async with connection.cursor() as cursor:
        await cursor.execute(sql, params)
        return await cursor.fetchall()


def unavailable(exc: BaseException) -> str | None:
    """core.database.unavailable's reason for one of psycopg's errors."""
    # PoolTimeout and QueryCanceled are OperationalErrors too: tested first.
    if isinstance(exc, PoolTimeout):
        return "pool_timeout"
    if isinstance(exc, psycopg.errors.QueryCanceled):
        return "statement_timeout"
    if isinstance(exc, psycopg.OperationalError):
        return "connection"
    return None
