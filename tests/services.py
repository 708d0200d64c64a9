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
from contextlib import contextmanager
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


@contextmanager
def postgresql(workdir: Path):
    """A PostgreSQL server; yields the URL of its superuser, without a database."""
    bindir, port = postgres_bin(), free_port()
    as_postgres = []
    if os.geteuid() == 0:
        as_postgres = ["runuser", "-u", "postgres", "--"]
        workdir.mkdir(parents=True, exist_ok=True)
        shutil.chown(workdir, pwd.getpwnam("postgres").pw_uid)
    data = workdir / "data"
    subprocess.run(
        [*as_postgres, bindir / "initdb", "-D", data, "-U", "postgres", "-A", "trust"],
        check=True,
        capture_output=True,
    )
    # Durability is of no use to a server that is deleted after the run.
    options = (
        f"-p {port} -k {workdir} -c listen_addresses=127.0.0.1 -c fsync=off "
        "-c synchronous_commit=off -c full_page_writes=off"
    )
    start = [bindir / "pg_ctl", "-D", data, "-o", options, "-l", workdir / "log", "-w"]
    subprocess.run([*as_postgres, *start, "start"], check=True, capture_output=True)
    try:
        yield f"postgres://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run(
            [*as_postgres, bindir / "pg_ctl", "-D", data, "-m", "immediate", "stop"],
            check=False,
            capture_output=True,
        )


@contextmanager
def redis(databases: int = 16):
    """A Redis server that keeps nothing on disk, with this many databases (Redis's
    default is 16); yields its URL, without a database."""
    executable = shutil.which("redis-server")
    if executable is None:
        raise RuntimeError("redis-server not found: apt-get install redis-server")
    port = free_port()
    server = subprocess.Popen(
        [
            executable,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--databases",
            str(databases),
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        yield f"redis://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=10)


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
