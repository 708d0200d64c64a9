"""Throwaway PostgreSQL, MariaDB, MySQL and Redis servers from Debian's
packages, on 127.0.0.1 (MySQL in a container of Debian unstable, its only
release of it).

pytest-postgresql cannot be used: CI runs as root and initdb refuses root, so
the server runs as the `postgres` user that Debian's package creates; MariaDB's
runs as its `mysql` user for the same reason.
"""

import os
import pwd
import random
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import time
from contextlib import contextmanager, suppress
from pathlib import Path
from urllib.parse import quote, urlsplit


def free_port() -> int:
    """A port nothing listens on, for a server a test starts, chosen below the
    kernel's ephemeral range. A port bound as ("127.0.0.1", 0) comes from that
    range, which the source ports of outgoing connections come from too: one
    made in the meantime could take it before the server binds it (seen in CI:
    "Address already in use")."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    assert low > 10000, f"the ephemeral range starts at {low}: no room below it"
    for _ in range(100):
        port = random.randrange(10000, low)  # noqa: S311  (a port, not a secret)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue  # taken
        return port
    raise RuntimeError("no free port found in 100 tries")


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
    """A new database `name` on the server of superuser `url` (PostgreSQL's or
    MariaDB's); returns its URL."""
    if urlsplit(url).scheme == "mysql":
        mariadb_query(url, f"CREATE DATABASE `{name}`")
        return f"{url}/{name}"
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


def rows(database_url: str, query: str) -> list[list[str]]:
    """The query's rows, as text, read from the database itself (PostgreSQL's
    or MariaDB's, by the URL's scheme)."""
    if urlsplit(database_url).scheme == "mysql":
        return [
            line.split("\t") for line in mariadb_query(database_url, query).splitlines()
        ]
    return [line.split("|") for line in psql(database_url, query).splitlines()]


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


# Where Debian puts mariadbd, in case PATH (a user's, not root's) lacks sbin.
MARIADB_DIRS = ("/usr/sbin", "/usr/bin")


def mariadb_tool(name: str) -> str:
    """The path of MariaDB's program `name` (mariadbd, mariadb-install-db, mariadb)."""
    path = os.environ.get("PATH", "")
    found = shutil.which(name, path=os.pathsep.join([path, *MARIADB_DIRS]))
    if found is None:
        raise RuntimeError(
            "MariaDB server binaries not found: apt-get install mariadb-server "
            f"(tests/system-packages.sh installs it); missing: {name}"
        )
    return found


class MariaDBError(RuntimeError):
    """The `mariadb` client failed; its message is the client's own."""


def mariadb_query(database_url: str, query: str) -> str:
    """The query's rows through the `mariadb` client over TCP, as the URL's user
    (on its database, if it names one): one per line, a tab between columns."""
    url = urlsplit(database_url)
    database = url.path.lstrip("/")
    result = subprocess.run(
        [
            *(mariadb_tool("mariadb"), "--no-defaults", "--protocol=TCP"),
            "--connect-timeout=5",
            *("--host", url.hostname, "--port", str(url.port), "--user", url.username),
            *("--batch", "--skip-column-names", "--execute", query),
            *([database] if database else []),
        ],
        # Not on the command line, where ps shows it.
        env={**os.environ, "MYSQL_PWD": url.password or ""},
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if result.returncode != 0:
        raise MariaDBError(
            f"{query!r} on {url.hostname}:{url.port}: {result.stderr.strip()}"
        )
    return result.stdout


def open_files_limit() -> list[str]:
    """The most files mariadbd may open: the hard limit it inherits. It asks for
    more than max_connections needs, and where the kernel refuses that it stays at
    the soft limit, which may be 1024, and cuts max_connections to fit."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY:
        return []
    return [f"--open-files-limit={min(hard, 65536)}"]


class MariaDB:
    """A MariaDB server of its own in workdir, which a test may stop and start
    again (its port stays). Durability is of no use to a server deleted after the
    run: it forces nothing to disk unless `durable` (a killed server keeps every
    commit either way; only the machine's crash tells them apart).

    The server runs in the foreground as a child of this process, as the `mysql`
    user when root: not under runuser, whose parent answers a SIGTERM by passing
    it on and sending SIGKILL 2 s later, which would make a clean shutdown a crash.
    """

    # What the service expects of its server, as a production my.cnf would set it.
    SETTINGS = (
        "--character-set-server=utf8mb4",
        "--collation-server=utf8mb4_unicode_ci",
        "--transaction-isolation=READ-COMMITTED",
        # MariaDB 10.11's default, named: the service relies on strict mode.
        "--sql-mode=STRICT_TRANS_TABLES,ERROR_FOR_DIVISION_BY_ZERO,"
        "NO_AUTO_CREATE_USER,NO_ENGINE_SUBSTITUTION",
        # Several suites on one worker share the server, each with its pools.
        "--max-connections=500",
    )
    # No fsync on a commit: it is in the log file (the kernel's cache) when it
    # returns and on disk within a second, data files are never forced and pages
    # have no doublewrite copy. A killed server keeps every commit (InnoDB
    # recovers them on its next start); only a crash of the machine would not.
    FAST = (
        "--innodb-flush-log-at-trx-commit=2",
        "--innodb-flush-method=nosync",
        "--innodb-doublewrite=0",
    )
    # Every commit in the log on disk before it returns, with MariaDB's default
    # flushing of data files and doublewrite, as in production.
    DURABLE = ("--innodb-flush-log-at-trx-commit=1",)

    def __init__(self, workdir: Path, durable: bool = False):
        self.mariadbd = mariadb_tool("mariadbd")
        install_db = mariadb_tool("mariadb-install-db")
        mariadb_tool("mariadb")  # start() waits for a query through it
        self.port, self.workdir = free_port(), workdir
        # Letters and digits only: the URL needs no quoting.
        self.password = secrets.token_hex(16)
        self.as_mysql = {}
        workdir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            try:
                mysql = pwd.getpwnam("mysql")
            except KeyError:
                raise RuntimeError(
                    "no `mysql` user to run MariaDB as: apt-get install mariadb-server"
                ) from None
            self.as_mysql = {
                "user": mysql.pw_uid,
                "group": mysql.pw_gid,
                "extra_groups": [],
            }
            shutil.chown(workdir, mysql.pw_uid, mysql.pw_gid)
        self.data = workdir / "data"
        # Its own directory for temporary tables: at startup MariaDB deletes
        # every `#sql*` file in its tmpdir, so a server starting beside it in a
        # shared /tmp would delete the tables this one's queries are using.
        self.tmp = workdir / "tmp"
        self.tmp.mkdir(exist_ok=True)
        if self.as_mysql:
            shutil.chown(self.tmp, mysql.pw_uid, mysql.pw_gid)
        self.log = workdir / "mariadbd.log"
        # root over TCP, with a password: the user a service's URL names, and
        # the one Django's test runner creates its test databases as. No other
        # account without a password is kept (install-db adds root@<hostname>).
        accounts = ", ".join(
            f"'root'@'{host}' IDENTIFIED BY '{self.password}'"
            for host in ("localhost", "127.0.0.1", "::1")
        )
        init = workdir / "init.sql"
        init.write_text(
            # install-db's server reads no grant tables; this loads them, or
            # ALTER USER would refuse to run.
            "FLUSH PRIVILEGES;\n"
            "DELETE FROM mysql.global_priv WHERE User = 'root'"
            " AND Host NOT IN ('localhost', '127.0.0.1', '::1');\n"
            f"ALTER USER {accounts};\n"
        )
        try:
            installed = subprocess.run(
                [
                    *(install_db, "--no-defaults", f"--datadir={self.data}"),
                    f"--tmpdir={self.tmp}",  # passed to its server
                    *("--auth-root-authentication-method=normal", "--skip-test-db"),
                    *("--skip-name-resolve", f"--extra-file={init}"),
                    # Its server shuts down cleanly: nothing is lost unforced.
                    *self.FAST,
                ],
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
                **self.as_mysql,
            )
        finally:
            init.unlink()
        if installed.returncode != 0:
            raise RuntimeError(
                f"mariadb-install-db failed ({installed.returncode}):\n"
                f"{(installed.stdout + installed.stderr)[-3000:]}"
            )
        self.options = [
            "--no-defaults",  # first: Debian's /etc/mysql would set sockets and logs
            *(f"--datadir={self.data}", f"--port={self.port}"),
            "--bind-address=127.0.0.1",
            f"--socket={self.socket}",
            f"--pid-file={workdir / 'mariadbd.pid'}",
            f"--tmpdir={self.tmp}",
            f"--log-error={self.log}",
            # Accounts by address alone, with no DNS lookup of each client.
            "--skip-name-resolve",
            # No binary log: no replica reads it, and it is a second write (and
            # with sync_binlog a second fsync) of every commit.
            "--skip-log-bin",
            *open_files_limit(),
            *self.SETTINGS,
            *(self.DURABLE if durable else self.FAST),
        ]
        self.process = None

    @property
    def url(self) -> str:
        """The URL of a user that may create databases, without a database."""
        return f"mysql://root:{self.password}@127.0.0.1:{self.port}"

    @property
    def socket(self) -> Path:
        """The server's Unix socket (its `root` user is root@localhost there)."""
        return self.workdir / "mariadbd.sock"

    def start(self, seconds: float = 60) -> None:
        """Starts the server and waits until its user runs a query over TCP."""
        self.process = subprocess.Popen(
            [self.mariadbd, *self.options],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            **self.as_mysql,
        )
        deadline = time.monotonic() + seconds
        while True:
            if self.process.poll() is not None:
                code, self.process = self.process.returncode, None
                raise RuntimeError(
                    f"mariadbd exited with {code} on start; its log:\n"
                    f"{self._log_tail()}"
                )
            try:
                mariadb_query(self.url, "SELECT 1")
                return
            except MariaDBError as error:
                if time.monotonic() > deadline:
                    self.stop("immediate")
                    raise TimeoutError(
                        f"MariaDB answers no query after {seconds}s: {error}\n"
                        f"{self._log_tail()}"
                    ) from None
            time.sleep(0.05)

    def stop(self, mode: str = "fast") -> None:
        """Stops the server: mode "fast" shuts it down cleanly (SIGTERM, a
        restart), "immediate" kills it (SIGKILL, a crash: InnoDB recovers on the
        next start)."""
        if self.process is None:
            return
        if mode == "fast":
            self.process.send_signal(signal.SIGTERM)
        elif mode == "immediate":
            self.process.kill()
        else:
            raise ValueError(f"no such shutdown mode: {mode}")
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise TimeoutError(
                f"mariadbd did not shut down within 60 s:\n{self._log_tail()}"
            ) from None
        finally:
            self.process = None

    def _log_tail(self) -> str:
        try:
            return "\n".join(self.log.read_text().splitlines()[-20:])
        except OSError:
            return "(no log)"


@contextmanager
def mariadb(workdir: Path):
    """A MariaDB server; yields the URL of a user that may create databases,
    without a database."""
    server = MariaDB(workdir)
    server.start()
    try:
        yield server.url
    finally:
        server.stop("immediate")


# mysqld in its container: the data directory made, root@% with the password of
# $PASSWORD (MySQL 9's only password plugin, caching_sha2_password, which
# mysqlclient, asyncmy and the mariadb client speak), then the server, with the
# settings of MariaDB.SETTINGS that MySQL has and nothing forced to disk
# (MariaDB.FAST). Its X protocol is off and it may read files from nowhere.
MYSQL_START = """\
set -e
mysqld --no-defaults --initialize-insecure --user=root --datadir=/var/lib/mysql
printf "CREATE USER 'root'@'%%' IDENTIFIED BY '%s';\\n" "$PASSWORD" > /init.sql
echo "GRANT ALL ON *.* TO 'root'@'%' WITH GRANT OPTION;" >> /init.sql
exec mysqld --no-defaults --user=root --datadir=/var/lib/mysql --init-file=/init.sql \\
  --bind-address=0.0.0.0 --socket=/tmp/mysqld.sock --mysqlx=OFF \\
  --secure-file-priv=NULL --skip-log-bin --innodb-use-native-aio=OFF \\
  --character-set-server=utf8mb4 --transaction-isolation=READ-COMMITTED \\
  --max-connections=500 --innodb-flush-log-at-trx-commit=2 --innodb-doublewrite=OFF
"""


@contextmanager
def mysql_itself(seconds: float = 300):
    """A MySQL server (not MariaDB) in a container, on 127.0.0.1; yields the URL
    of a user that may create databases, without a database. Its image is built
    on first use (containers.MYSQL_SERVER, about 90 s), then kept."""
    # Imported here: this module also runs where only Debian's Python is, with
    # no pytest, which containers imports (tests/test_bootstrap.py).
    import containers

    image = containers.stand_in(containers.MYSQL_SERVER_IMAGE, containers.MYSQL_SERVER)
    port, password = free_port(), secrets.token_hex(16)
    name = f"template-tests-mysql-{port}"
    containers.podman(
        *("run", "--detach", f"--name={name}"),
        *(f"--publish=127.0.0.1:{port}:3306", f"--env=PASSWORD={password}"),
        *(image, "sh", "-c", MYSQL_START),
    )
    url = f"mysql://root:{password}@127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + seconds
        while True:
            try:
                version = mariadb_query(url, "SELECT VERSION()").strip()
                break
            except MariaDBError as error:
                running = containers.podman(
                    *("container", "inspect", "--format={{.State.Running}}", name)
                ).stdout.strip()
                if running != "true" or time.monotonic() > deadline:
                    logs = containers.podman("logs", name, check=False)
                    raise RuntimeError(
                        f"MySQL answers no query ({error}), its container "
                        f"{'stopped' if running != 'true' else f'after {seconds} s'}:"
                        f"\n{(logs.stdout + logs.stderr)[-3000:]}"
                    ) from None
            time.sleep(0.5)
        assert "mariadb" not in version.lower(), f"not MySQL itself: {version}"
        yield url
    finally:
        containers.podman("rm", "--force", "--time=0", name, check=False)


class Redis:
    """A Redis server with this many databases (Redis's default is 16), which a
    test may stop and start again (its port stays). It keeps nothing on disk,
    unless `durable_in` names a directory: then every write is in its append-only
    file before Redis answers, as a task broker's Redis must keep its queue.

    With `tls_in` (a directory), it is a Redis as the service's README asks for in
    production: TLS only, with a certificate from a CA of the test's own (trustme;
    its file is `ca_file`), and one ACL user, whose name and password need
    percent-encoding in a URL; the default user is off."""

    ACL_USER, ACL_PASSWORD = "svc@team", "p:w/d"

    def __init__(
        self,
        databases: int = 16,
        durable_in: Path | None = None,
        tls_in: Path | None = None,
    ):
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
        self.listening = ["--port", str(self.port)]
        self.tls = tls_in is not None
        if self.tls:
            # Here, not at the top: tests/test_bootstrap.py imports this module
            # with a bare Debian's Python, which has the standard library only.
            import trustme

            self.ca_file = tls_in / "ca.pem"
            ca = trustme.CA()
            ca.cert_pem.write_to_path(self.ca_file)
            issued = ca.issue_cert("127.0.0.1")
            issued.private_key_and_cert_chain_pem.write_to_path(tls_in / "server.pem")
            self.listening = [
                *("--port", "0", "--tls-port", str(self.port)),
                *("--tls-cert-file", str(tls_in / "server.pem")),
                *("--tls-key-file", str(tls_in / "server.pem")),
                *("--tls-auth-clients", "no"),
                *("--user", "default", "off"),
                *("--user", self.ACL_USER, "on", f">{self.ACL_PASSWORD}"),
                *("~*", "&*", "+@all"),
            ]
        self.process = None

    @property
    def url(self) -> str:
        """Its URL, without a database."""
        if self.tls:
            user, password = (
                quote(self.ACL_USER, safe=""),
                quote(self.ACL_PASSWORD, safe=""),
            )
            return f"rediss://{user}:{password}@127.0.0.1:{self.port}"
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                *(self.executable, *self.listening, "--bind", "127.0.0.1"),
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
def redis(databases: int = 16, tls_in: Path | None = None):
    """A Redis server; yields it (its `url` is without a database)."""
    server = Redis(databases, tls_in=tls_in)
    server.start()
    try:
        yield server
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
