"""What the service knows of MariaDB/MySQL's drivers beyond Django's backend:
the asyncio connections of core.reads (asyncmy's pool) and the drivers' errors
that mean the database could not serve (core.database).

Installed as core/database_server.py by the template for services generated
with MySQL; core/database_servers/postgresql.py is the same contract there.

asyncmy rather than aiomysql: measured on a one-row and a 20-row read, asyncmy
(Cython) costs 63-83 µs of CPU a read, aiomysql (pure Python, on PyMySQL)
1.6 times that on one row and 3.3-4.5 times on 20 (the template's
tests/bench/mysql_drivers.py; its results/mysql-drivers). Django's own backend stays on
mysqlclient for writes and tasks: the driver Django recommends and tests.

asyncmy's pool waits without a bound and has no figures of its own for the
metrics: Pool adds DATABASE_POOL_TIMEOUT (PoolTimeout, a 503) and counts the
requests waiting. It checks each connection before lending it (one the server
closed, seen by the event loop, is replaced), so no request gets a dead one.

MariaDB and MySQL differ where the service relies on them, and which one it
talks to is known only once connected (VERSION()): the statement time limit
(time_limit()), and what becomes of a statement whose client left (a
cancelled read: Pool.borrow()).
"""

import asyncio
import weakref
from contextlib import asynccontextmanager

import asyncmy
import asyncmy.errors
import MySQLdb
from django.conf import settings
from django.db import connections

# MariaDB's and MySQL's error numbers for a statement stopped at its time limit
# (max_statement_time, max_execution_time).
STATEMENT_TIMEOUT_ERRORS = {1969, 3024}


# The parameters of Django's connections that asyncmy takes alike.
CONNECT_KEYS = (
    *("user", "password", "host", "port", "unix_socket", "database"),
    *("charset", "init_command", "connect_timeout"),
)


def is_mariadb(version: str) -> bool:
    return "mariadb" in version.lower()


def time_limit(version: str) -> str:
    """The statement that stops this session's statements after
    DATABASE_STATEMENT_TIMEOUT (core.database counts it, the request gets a
    503): MariaDB's max_statement_time (seconds, every statement) or MySQL's
    max_execution_time (milliseconds, SELECTs only). Sent once connected, not
    in init_command: MariaDB runs MySQL's /*!...*/ comments too, and refuses
    MySQL's variable."""
    seconds = settings.DATABASE_STATEMENT_TIMEOUT
    if is_mariadb(version):
        return f"SET SESSION max_statement_time = {seconds:g}"
    return f"SET SESSION max_execution_time = {round(seconds * 1000)}"


def limit_statements(sender, connection, **kwargs) -> None:
    """connection_created (core.apps): each of Django's own connections gets
    time_limit(). Django has asked the server what it is by then."""
    if connection.vendor == "mysql":
        with connection.cursor() as cursor:
            cursor.execute(time_limit(connection.mysql_server_info))


class PoolTimeout(Exception):
    """No connection of the asyncio pool was free within DATABASE_POOL_TIMEOUT."""


class Pool:
    """asyncmy's pool for one alias, made on the first read of an event loop."""

    def __init__(self, alias: str):
        wrapper = connections[alias]
        # Django's own connection parameters: the same server, credentials,
        # character set and session settings (init_command) as its connections.
        # Not its conversions (mysqlclient's): Django's converters of each
        # field (core.reads) turn asyncmy's values into what Django's would be.
        params = wrapper.get_connection_params()
        self.kwargs = {key: params[key] for key in CONNECT_KEYS if key in params}
        # Each statement commits on its own: a read sees what was committed
        # when it started (the isolation level makes no difference to it).
        self.kwargs["autocommit"] = True
        sizes = settings.DATABASE_READ_POOL
        self.min_size, self.max_size = sizes["min_size"], sizes["max_size"]
        self.timeout = sizes["timeout"]
        # A connection idle for longer than Django keeps its own connections is
        # replaced, before the server's wait_timeout or a proxy's idle timeout
        # (idle time too) could cut it.
        self.recycle = wrapper.settings_dict["CONN_MAX_AGE"] or 3600
        self.alias = alias
        self.pool = None
        # What the server is, asked once the pool is open (describe_server).
        self.server_data = None
        self.waiting = 0
        self._opening = asyncio.Lock()
        # asyncmy's pool has no hook for a new connection (psycopg_pool's
        # configure): borrow() gives each its time_limit() at its first loan.
        self.limited = weakref.WeakSet()
        # The statements of cancelled reads being ended (end_statement()).
        self.ending: set[asyncio.Task] = set()

    async def open(self) -> None:
        async with self._opening:
            if self.server_data is not None:
                return
            if self.pool is None:
                self.pool = await asyncmy.create_pool(
                    minsize=self.min_size,
                    maxsize=self.max_size,
                    pool_recycle=self.recycle,
                    **self.kwargs,
                )
            async with self.borrow() as connection:
                row = (await run(connection, SERVER_DATA_SQL, None))[0]
            data = dict(zip(SERVER_DATA_KEYS, row, strict=True))
            for key in ("sql_auto_is_null", "lower_case_table_names"):
                data[key] = bool(data[key])
            data["has_zoneinfo_database"] = bool(data["has_zoneinfo_database"])
            self.server_data = data

    def describe_server(self) -> None:
        """Gives this thread's Django connection what its MySQL compiler asks of
        the server (the version and modes decide the SQL it writes). Django would
        open a synchronous connection to ask, which the event loop cannot."""
        connections[self.alias].__dict__.setdefault(
            "mysql_server_data", self.server_data
        )

    @asynccontextmanager
    async def borrow(self):
        """A connection for one statement, within DATABASE_POOL_TIMEOUT."""
        self.waiting += 1
        try:
            async with asyncio.timeout(self.timeout):
                connection = await self.pool.acquire()
        except TimeoutError:
            raise PoolTimeout(
                f"no connection free within {self.timeout:g} s "
                f"({self.max_size} in the pool)"
            ) from None
        finally:
            self.waiting -= 1
        # A read cancelled half way (the client went away) leaves its result
        # unread: asyncmy closes that connection itself, and the pool drops it.
        try:
            if self.server_data is not None and connection not in self.limited:
                async with connection.cursor() as cursor:
                    await cursor.execute(time_limit(self.server_data["version"]))
                self.limited.add(connection)
            yield connection
        except asyncio.CancelledError:
            # Cut mid-statement only if asyncmy closed the connection: one still
            # open ran no statement, and goes back to the pool for another read,
            # which a KILL QUERY of its thread would stop.
            if not connection.connected:
                self.end_statement(connection.thread_id())
            raise
        finally:
            self.pool.release(connection)

    def end_statement(self, thread_id: int) -> None:
        """MySQL runs a statement whose client has gone on to its end, holding
        its locks and a server thread, and notices only when it sends the result
        (MariaDB ends it with the session): a connection of its own asks the
        server to stop it (KILL QUERY), as psycopg cancels a query on
        PostgreSQL."""
        if self.server_data is None or is_mariadb(self.server_data["version"]):
            return
        task = asyncio.get_running_loop().create_task(self._kill_query(thread_id))
        self.ending.add(task)
        task.add_done_callback(self.ending.discard)

    async def _kill_query(self, thread_id: int) -> None:
        try:
            # Bounded as a read's wait for a connection is: lifespan shutdown
            # waits for it (close_pool).
            async with asyncio.timeout(self.timeout):
                connection = await asyncmy.connect(**self.kwargs)
                try:
                    async with connection.cursor() as cursor:
                        await cursor.execute("KILL QUERY %s", (thread_id,))
                finally:
                    connection.close()
        except (TimeoutError, OSError, asyncmy.errors.MySQLError):
            # The server is away or too busy to answer, and will end the
            # statement once it sends its result; or it has ended already
            # ("Unknown thread id").
            pass


# What Django's MySQL backend asks the server (DatabaseWrapper.mysql_server_data).
SERVER_DATA_SQL = (
    "SELECT VERSION(), @@sql_mode, @@default_storage_engine, @@sql_auto_is_null,"
    " @@lower_case_table_names,"
    " CONVERT_TZ('2001-01-01 01:00:00', 'UTC', 'UTC') IS NOT NULL"
)
SERVER_DATA_KEYS = (
    "version",
    "sql_mode",
    "default_storage_engine",
    "sql_auto_is_null",
    "lower_case_table_names",
    "has_zoneinfo_database",
)


def new_pool(alias: str) -> Pool:
    """A pool for `alias`, not open yet."""
    return Pool(alias)


async def open_pool(found: Pool) -> None:
    if found.server_data is None:
        await found.open()
    # On every read, not once at open: the loop's thread does not keep one
    # Django connection object for good (the suite's reads fail with only one).
    found.describe_server()


def is_open(found: Pool) -> bool:
    return found.server_data is not None


async def close_pool(found: Pool) -> None:
    await asyncio.gather(*found.ending)
    if found.pool is not None:
        found.pool.close()
        await found.pool.wait_closed()
    found.pool = found.server_data = None


def stats(found: Pool) -> dict:
    """The figures core.metrics.observe_pool reads, named as psycopg_pool's."""
    pool = found.pool
    return {
        "pool_size": pool.size,
        "pool_available": pool.freesize,
        "pool_max": pool.maxsize,
        "requests_waiting": found.waiting,
    }


def borrow(found: Pool):
    return found.borrow()


async def run(connection, sql: str, params) -> list[tuple]:
    if _tracer is not None:
        return await _traced_run(connection, sql, params)
    async with connection.cursor() as cursor:
        await cursor.execute(sql, params)
        return list(await cursor.fetchall())


# Set by core.tracing when traces are on: no span is made otherwise.
_tracer = None


def trace_statements(tracer) -> None:
    """Records each statement of the asyncio pool as a CLIENT span, as
    opentelemetry-instrumentation-mysqlclient records Django's (its name, the
    statement with its placeholders, the server): no instrumentation of asyncmy
    exists."""
    global _tracer
    _tracer = tracer
    database = settings.DATABASES["default"]
    _SERVER_ATTRIBUTES.update(
        {
            "db.system": "mysql",
            "db.name": database["NAME"] or "",
            "net.peer.name": database["HOST"] or "localhost",
            "net.peer.port": int(database["PORT"] or 3306),
        }
    )


_SERVER_ATTRIBUTES: dict = {}


async def _traced_run(connection, sql: str, params) -> list[tuple]:
    from opentelemetry.trace import SpanKind

    with _tracer.start_as_current_span(
        sql.split(None, 1)[0] if sql.strip() else "mysql",
        kind=SpanKind.CLIENT,
        attributes={**_SERVER_ATTRIBUTES, "db.statement": sql},
    ):
        async with connection.cursor() as cursor:
            await cursor.execute(sql, params)
            return list(await cursor.fetchall())


def unavailable(exc: BaseException) -> str | None:
    """core.database.unavailable's reason for one of the drivers' errors."""
    if isinstance(exc, PoolTimeout):
        return "pool_timeout"
    if isinstance(exc, (MySQLdb.OperationalError, asyncmy.errors.OperationalError)):
        if exc.args and exc.args[0] in STATEMENT_TIMEOUT_ERRORS:
            return "statement_timeout"
        # The server went away or refused (2002, 2006, 2013, 1040, 1927), or
        # rolled the transaction back (a deadlock, a lock wait timeout).
        return "connection"
    if isinstance(exc, (MySQLdb.InterfaceError, asyncmy.errors.InterfaceError)):
        return "connection"  # the connection was already closed
    return None
