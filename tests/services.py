"""Throwaway PostgreSQL and Redis servers from Debian's packages, on 127.0.0.1.

pytest-postgresql cannot be used: CI runs as root and initdb refuses root, so
the server runs as the `postgres` user that Debian's package creates.
"""

import os
import pwd
import shutil
import socket
import subprocess
import time
from contextlib import contextmanager, suppress
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {seconds}s")


def postgres_bin() -> Path:
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda path: int(path.parent.parent.name),
    )
    if not versions:
        raise RuntimeError(
            "PostgreSQL server binaries not found: apt-get install postgresql "
            "(tests/run.sh does it)"
        )
    return versions[-1].parent


def create_database(url: str, name: str) -> str:
    """A new database `name` on the server of superuser `url`; returns its URL."""
    subprocess.run(
        [postgres_bin() / "createdb", f"--maintenance-db={url}/postgres", name],
        check=True,
        capture_output=True,
    )
    return f"{url}/{name}"


def psql(database_url: str, query: str) -> str:
    """The query's rows, read from the database itself: one per line, `|` between
    columns."""
    result = subprocess.run(
        [postgres_bin() / "psql", database_url, "-Atc", query],
        check=True,
        capture_output=True,
        text=True,
    )
    return result.stdout


class PostgreSQL:
    """A PostgreSQL server of its own in workdir, which a test may stop and start
    again (its port stays). Durability is of no use to a server deleted after the
    run, except where a test kills it and counts what it kept: `durable`."""

    def __init__(self, workdir: Path, durable: bool = False):
        self.bindir, self.port, self.workdir = postgres_bin(), free_port(), workdir
        self.as_postgres = []
        if os.geteuid() == 0:
            self.as_postgres = ["runuser", "-u", "postgres", "--"]
            workdir.mkdir(parents=True, exist_ok=True)
            shutil.chown(workdir, pwd.getpwnam("postgres").pw_uid)
        self.data = workdir / "data"
        subprocess.run(
            [
                *self.as_postgres,
                *(self.bindir / "initdb", "-D", self.data),
                *("-U", "postgres", "-A", "trust"),
            ],
            check=True,
            capture_output=True,
        )
        self.options = f"-p {self.port} -k {workdir} -c listen_addresses=127.0.0.1"
        if not durable:
            self.options += (
                " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            )

    @property
    def url(self) -> str:
        """The URL of its superuser, without a database."""
        return f"postgres://postgres@127.0.0.1:{self.port}"

    def _pg_ctl(self, *arguments) -> None:
        subprocess.run(
            [*self.as_postgres, self.bindir / "pg_ctl", "-D", self.data, *arguments],
            check=True,
            capture_output=True,
        )

    def start(self) -> None:
        self._pg_ctl("-o", self.options, "-l", self.workdir / "log", "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        """pg_ctl's shutdown modes: "fast" (a restart), "immediate" (a crash)."""
        self._pg_ctl("-m", mode, "-w", "stop")


@contextmanager
def postgresql(workdir: Path):
    """A PostgreSQL server; yields the URL of its superuser, without a database."""
    server = PostgreSQL(workdir)
    server.start()
    try:
        yield server.url
    finally:
        with suppress(subprocess.CalledProcessError):
            server.stop("immediate")


class Redis:
    """A Redis server with this many databases (Redis's default is 16), which a
    test may stop and start again (its port stays). It keeps nothing on disk,
    unless `durable_in` names a directory: then every write is in its append-only
    file before Redis answers, as a task broker's Redis must keep its queue."""

    def __init__(self, databases: int = 16, durable_in: Path | None = None):
        self.executable = shutil.which("redis-server")
        if self.executable is None:
            raise RuntimeError("redis-server not found: apt-get install redis-server")
        self.port, self.databases = free_port(), databases
        self.persistence = ["--save", "", "--appendonly", "no"]
        if durable_in is not None:
            self.persistence = [
                *("--save", "", "--dir", str(durable_in)),
                *("--appendonly", "yes", "--appendfsync", "always"),
            ]
        self.process = None

    @property
    def url(self) -> str:
        """Its URL, without a database."""
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                *(self.executable, "--port", str(self.port), "--bind", "127.0.0.1"),
                *self.persistence,
                *("--databases", str(self.databases)),
            ],
            stdout=subprocess.DEVNULL,
        )
        wait_for_port(self.port)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


@contextmanager
def redis(databases: int = 16):
    """A Redis server; yields its URL, without a database."""
    server = Redis(databases)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


class RedisDatabases:
    """Hands out the databases of one Redis server, each at most once.

    The tests that share a pytest-xdist worker share its Redis server, and session
    stacks keep running while other tests start theirs: two uses of one database
    would see each other's keys, task queues and channel-layer groups."""

    def __init__(self, url: str, count: int):
        self.url, self.count = url, count
        self.numbers = iter(range(count))

    def new(self) -> str:
        """The URL of a database no one has had yet."""
        number = next(self.numbers, None)
        if number is None:
            raise RuntimeError(
                f"all {self.count} databases of {self.url} are handed out: "
                "start the server with more"
            )
        return f"{self.url}/{number}"
