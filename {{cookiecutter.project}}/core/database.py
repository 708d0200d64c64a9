"""Times every database query and counts the failed ones, async ORM included;
and closes a process's connections and pools when it stops or forks.

The async ORM runs its queries in a thread through the same connection objects,
so one execute wrapper per connection sees them all. Django opens connections
again and again (per request, or from the pool), and connection_created fires
each time: the wrapper is added once per connection object.
"""

import select
import sqlite3
import time

from django.conf import settings
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


def check_pooled_connections() -> None:
    """Gives each psycopg pool of Django a check of every connection before it
    is lent (core.reads gives its own pools the same)."""
    for alias in connections:
        options = connections.settings[alias]["OPTIONS"]
        if isinstance(options.get("pool"), dict):
            options["pool"].setdefault("check", pool_check(alias))


def pool_check(alias: str):
    """The `check` of Django's pool for `alias`: a connection the server may have
    dropped (a restart, a failover, an idle timeout) gets one empty statement,
    and is replaced instead of failing a request. When one is dead, the others
    idle beside it likely are too: the whole pool is checked at once. psycopg
    alone would try them one by one, pausing 1 s, then 2 s, 4 s... before each,
    and a request would wait seconds or time out."""
    from psycopg_pool import ConnectionPool

    def check(connection) -> None:
        if not dropped(connection):
            return
        try:
            ConnectionPool.check_connection(connection)
        except Exception:
            connections[alias].pool.check()
            raise

    return check


def dropped(connection) -> bool:
    """Whether the server may have dropped this idle connection: it then has
    its error message or the end of the stream waiting to be read, where a live
    idle connection has nothing. One system call, not a round trip per checkout
    (the reads of a request borrow a connection for each statement). poll(), not
    select(): a worker holding a thousand WebSockets or streams has descriptors
    above select()'s 1023, and select() refuses them."""
    poller = select.poll()
    poller.register(connection.fileno(), select.POLLIN)
    return bool(poller.poll(0))


def unavailable(exc: BaseException) -> str | None:
    """Why the database could not serve, if that is what `exc` says: the client
    may retry, so the answer is a 503, never a 500. Django wraps the driver's
    errors, so the chain of causes is searched.

    - "pool_timeout": no free connection within DATABASE_POOL_TIMEOUT (also while
      the server is down: the pool keeps trying to connect in the background);
    - "statement_timeout": the server cancelled the statement;
    - "connection": the server went away or refused the connection (a restart,
      a failover, pg_terminate_backend), ran out of a resource, or aborted the
      transaction (a deadlock, a serialization failure): rolled back whole;
    - "locked": SQLite's write lock was not free within DATABASE_BUSY_TIMEOUT.
    """
    while exc is not None:
        reason = _reason(exc)
        if reason:
            return reason
        exc = exc.__cause__
    return None


def _reason(exc: BaseException) -> str | None:
    if isinstance(exc, sqlite3.OperationalError):
        return "locked" if "locked" in str(exc) else None
    if settings.DATABASE_VENDOR == "sqlite":
        return None
    # Imported here: a service generated for SQLite has no such module.
    from core import database_server

    return database_server.unavailable(exc)


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
