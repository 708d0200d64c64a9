"""Database reads without a thread: Django-built querysets run on the native
asyncio connections of the database server's driver (core.database_server:
psycopg 3's AsyncConnectionPool on PostgreSQL, asyncmy's pool on MySQL).

Django's async ORM (aget, async for, acount) runs each query through
sync_to_async on a synchronous connection. Here Django still builds the SQL and
converts the values (the queryset's own compiler), and only the round trip to
the server is asyncio. Reads take values() querysets and return dicts: no model
instance, so no lazy load can start a query behind the caller's back.

On SQLite (no asyncio driver behind Django's ORM) the same calls run on Django's
async ORM, so callers have one code path. Writes stay on Django's ORM: a write
that needs a transaction runs whole in one sync_to_async call (items.store).

Each read borrows a connection for its statement and gives it back at once,
also when the view raises or the client goes away (psycopg then cancels the
statement on the server; asyncmy closes the connection, which ends it). Waiting
for a connection is bounded by DATABASE_POOL_TIMEOUT (PoolTimeout, a 503), and
every statement by the server's statement time limit (config/settings.py).

Why not django-async-backend (6.1.5), the library that makes the whole ORM
async: measured on the items read it costs 10-15 % more CPU than this module
(the service README has the figures), and it replaces the database backend of
the process, patches every model class at startup, ties a connection to the
task that first used it (two reads under asyncio.gather raise), does not support
prefetch_related or iterator(), and hooks async receivers to the request
signals, which would put a thread hop back on every request (core/handler.py).
The service needs native reads only.
"""

import asyncio
import functools
import time
import weakref

from django.conf import settings
from django.core.exceptions import EmptyResultSet
from django.db import connections
from django.db.models import Value

from core import metrics

# One pool per event loop: a worker process has one, a test session has its own.
_POOLS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def native(alias: str) -> bool:
    """Whether `alias` is the database server this service was generated for
    (its tests may still run on SQLite)."""
    return connections[alias].vendor == settings.DATABASE_VENDOR != "sqlite"


@functools.cache
def _server():
    # Imported here, once: a service generated for SQLite has no such module.
    from core import database_server

    return database_server


async def pool(alias: str = "default"):
    loop = asyncio.get_running_loop()
    pools = _POOLS.setdefault(loop, {})
    found = pools.get(alias)
    if found is None:
        found = pools[alias] = _server().new_pool(alias)
    await _server().open_pool(found)  # safe when several requests open it at once
    return found


async def close() -> None:
    """Closes this loop's pools (ASGI lifespan shutdown, the end of a test run)."""
    for found in _POOLS.pop(asyncio.get_running_loop(), {}).values():
        await _server().close_pool(found)


def pool_stats() -> dict[tuple[str, str], dict]:
    """The figures of this process's open pools, by (alias, "async")."""
    return {
        (alias, "async"): _server().stats(found)
        for pools in list(_POOLS.values())
        for alias, found in pools.items()
        if _server().is_open(found)
    }


async def _execute(found, alias: str, sql: str, params) -> list[tuple]:
    asked = time.perf_counter()
    async with _server().borrow(found) as connection:
        metrics.DB_POOL_WAIT.labels(alias).observe(time.perf_counter() - asked)
        started = time.perf_counter()
        try:
            return await _server().run(connection, sql, params)
        except Exception as exc:
            metrics.DB_ERRORS.labels(alias, type(exc).__name__).inc()
            raise
        finally:
            metrics.DB_QUERY_DURATION.labels(
                alias, metrics.operation_label(sql)
            ).observe(time.perf_counter() - started)


async def fetch(queryset) -> list[dict]:
    """The rows of a values() queryset, as its own iteration would give them."""
    if not native(queryset.db):
        return [row async for row in queryset]
    found = await pool(queryset.db)  # first: the compiler may ask what the server is
    query = queryset.query
    compiler = query.get_compiler(using=queryset.db)
    try:
        sql, params = compiler.as_sql()
    except EmptyResultSet:  # e.g. filter(pk__in=[]): Django runs no query either
        return []
    rows = await _execute(found, queryset.db, sql, params)
    names = [*query.extra_select, *query.values_select, *query.annotation_select]
    # results_iter applies the same converters Django's iteration would.
    return [dict(zip(names, row, strict=True)) for row in compiler.results_iter([rows])]


async def count(queryset) -> int:
    if not native(queryset.db):
        return await queryset.acount()
    found = await pool(queryset.db)  # first: the compiler may ask what the server is
    inner = queryset.order_by().values("pk")
    try:
        sql, params = inner.query.get_compiler(using=queryset.db).as_sql()
    except EmptyResultSet:
        return 0
    # The inner SQL is Django's, with its parameters still separate.
    counting = f"SELECT COUNT(*) FROM ({sql}) AS counted"  # noqa: S608
    rows = await _execute(found, queryset.db, counting, params)
    return rows[0][0]


async def aggregate(queryset, **expressions) -> dict:
    """queryset.aggregate(**expressions), as one row of a values() query."""
    if not native(queryset.db):
        return await queryset.aaggregate(**expressions)
    # Grouped by a constant, which Django leaves out of GROUP BY: one row over
    # the whole queryset, the SQL aggregate() itself would run.
    whole = queryset.order_by().annotate(_whole=Value(1)).values("_whole")
    rows = await fetch(whole.annotate(**expressions).values(*expressions))
    if not rows:  # a queryset that cannot match: what aggregate() answers then
        return {
            name: expression.empty_result_set_value
            for name, expression in expressions.items()
        }
    return rows[0]
