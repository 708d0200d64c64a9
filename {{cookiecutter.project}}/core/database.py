"""Times every database query and counts the failed ones, async ORM included;
and closes a process's connections and pools when it stops or forks.

The async ORM runs its queries in a thread through the same connection objects,
so one execute wrapper per connection sees them all. Django opens connections
again and again (per request, or from the pool), and connection_created fires
each time: the wrapper is added once per connection object.
"""

import time

from django.db import connections

from core import metrics


def close_databases() -> None:
    """Closes this thread's connections and every open pool. psycopg's pool
    threads would hold up the interpreter's exit by seconds, and a forked child
    must not inherit a pool's connections."""
    for connection in connections.all():
        connection.close()
        # Django's close_pool() opens a pool that does not exist, to close it.
        if connection.alias in getattr(connection, "_connection_pools", {}):
            connection.close_pool()


def unavailable(exc: BaseException) -> str | None:
    """Why the database could not serve in time, if that is what `exc` says:
    "pool_timeout" (no free connection within DATABASE_POOL_TIMEOUT) or
    "statement_timeout" (the server cancelled it). Django wraps psycopg's errors,
    so the chain of causes is searched."""
    try:
        from psycopg.errors import QueryCanceled
        from psycopg_pool import PoolTimeout
    except ImportError:  # a service generated for SQLite
        return None
    while exc is not None:
        if isinstance(exc, PoolTimeout):
            return "pool_timeout"
        if isinstance(exc, QueryCanceled):
            return "statement_timeout"
        exc = exc.__cause__
    return None


def pool_stats() -> dict[tuple[str, str], dict]:
    """psycopg_pool's figures of Django's open pools, by (alias, "sync")."""
    return {
        (connection.alias, "sync"): found.get_stats()
        for connection in connections.all()
        if (found := getattr(connection, "_connection_pools", {}).get(connection.alias))
        and not found.closed
    }


class QueryMetrics:
    def __init__(self, alias: str):
        self.alias = alias

    def __call__(self, execute, sql, params, many, context):
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        except Exception as exc:
            metrics.DB_ERRORS.labels(self.alias, type(exc).__name__).inc()
            raise
        finally:
            metrics.DB_QUERY_DURATION.labels(
                self.alias, metrics.operation_label(sql)
            ).observe(time.perf_counter() - started)


def instrument(sender, connection, **kwargs) -> None:
    if not any(isinstance(w, QueryMetrics) for w in connection.execute_wrappers):
        connection.execute_wrappers.append(QueryMetrics(connection.alias))
