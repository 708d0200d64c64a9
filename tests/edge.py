"""Real app servers, task workers and a real Nginx, started from a generated
service, on 127.0.0.1.

A test deployment is one more deployment of deploy/nginx/: like the pod and the
VM, it writes its own upstream.conf and deployment.conf. Only the listen ports
are moved (to free high ports), so that runs in parallel do not collide.
"""

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection

from harness import service_env
from services import free_port, wait_for_port

# What a browser on the public side sends; the service allows its own host.
ORIGIN = {"Origin": "http://127.0.0.1"}
PUBLIC_LISTEN = "listen 8080 default_server;"
STATUS_LISTEN = "listen 127.0.0.1:8081;"
# Under an Nginx's prefix: the $static_root of deploy/nginx/.
STATIC_ROOT = "srv"
# The name the tests' API key is issued to (manage.py issue_api_key).
KEY_NAME = "template-tests"


def bearer(token: str | None) -> dict[str, str]:
    """The header that shows an API token (none for None): the one place the
    tests, their load generators and the benchmark build it."""
    return {} if token is None else {"Authorization": f"Bearer {token}"}


class _ServerToken:
    """request()'s default token: the one of the server it is sent to."""

    def __repr__(self) -> str:
        return "SERVER_TOKEN"


SERVER_TOKEN = _ServerToken()


class Process:
    """A started process whose output goes to a log file."""

    def __init__(self, command: list, cwd: Path, env: dict, log: Path):
        self.command, self.cwd, self.env, self.log = command, cwd, env, log
        self.process = None

    def start(self) -> None:
        with self.log.open("a") as output:
            self.process = subprocess.Popen(
                self.command,
                cwd=self.cwd,
                env=self.env,
                stdout=output,
                stderr=subprocess.STDOUT,
            )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int | None:
        if self.process is None:  # never started
            return None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def output(self) -> str:
        return self.log.read_text()

    @contextmanager
    def told_if_silent(self):
        """Around waiting for a process just started to answer: when it does
        not, the failure says whether it exited and ends with its output."""
        try:
            yield
        except (OSError, TimeoutError) as error:
            status = self.process.poll()
            raise AssertionError(
                f"{self.log.name}: no answer ({error}), "
                f"{'still running' if status is None else f'exit status {status}'}; "
                f"its output ends:\n{self.output()[-3000:]}"
            ) from error

    def abort_with_stacks(self) -> str:
        """SIGABRT to each of the process's descendants (a server's workers), the
        deepest first, one at a time: faulthandler (PYTHONFAULTHANDLER) writes where
        each one's threads were to the log, whose lines other than JSON are
        returned. For a test that fails because a worker stopped answering."""
        if self.process is not None:
            for pid in descendants(self.process.pid):
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGABRT)
                time.sleep(0.5)
        lines = self.log.read_text(errors="replace").splitlines()
        return "\n".join(line for line in lines if not line.startswith("{"))

    @contextmanager
    def stacks_on_failure(self):
        """Around a test's steps that need the process answering: when one fails,
        prints where each of its workers was (abort_with_stacks), and the
        failure goes on."""
        try:
            yield
        except BaseException:
            print(f"where the workers of {self.log.name} were:")
            print(self.abort_with_stacks())
            raise


def children(pid: int) -> list[int]:
    try:
        listed = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return list(map(int, listed.split()))


def descendants(pid: int) -> list[int]:
    """The deepest first."""
    return [d for child in children(pid) for d in [*descendants(child), child]]


class App(Process):
    """The service's web process, started by its own bin/serve, on a free port or,
    with `socket`, on a unix socket (UDS) as a VM deployment may want; on SQLite in
    workdir unless env has a DATABASE_URL. Its settings come from the service's
    local .env (its secret key, DJANGO_DEBUG=true) unless env says
    DJANGO_READ_DOT_ENV=false, bin/serve's own default.

    `token` is the API key migrate() issues: request() shows it to this app and
    to the Nginx in front of it unless told otherwise."""

    token: str | None = None

    def __init__(
        self, project: Path, workdir: Path, name: str, socket: Path | None = None, **env
    ):
        self.port, self.socket = free_port(), socket
        # Granian's exporter: each instance needs its own port (ignored by others).
        self.granian_metrics_port = free_port()
        if socket is not None:
            env["UDS"] = str(socket)
        env = service_env(
            PATH=f"{project / '.venv' / 'bin'}:{service_env()['PATH']}",
            HOST="127.0.0.1",
            PORT=str(self.port),
            GRANIAN_METRICS_PORT=str(self.granian_metrics_port),
            # Process.abort_with_stacks(); costs nothing until a fatal signal.
            PYTHONFAULTHANDLER="1",
            **{
                "DATABASE_URL": f"sqlite:///{workdir / 'db.sqlite3'}",
                "DJANGO_READ_DOT_ENV": "true",
                **env,
            },
        )
        super().__init__(["bin/serve"], project, env, workdir / f"{name}.log")

    def manage(self, *args: str) -> str:
        """Runs `manage.py ARGS` with the app's environment; returns its stdout."""
        result = subprocess.run(
            [self.cwd / ".venv" / "bin" / "python", "manage.py", *args],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    def migrate(self) -> None:
        """Creates or updates the app's database, as a deploy does before starting,
        and issues the API key its clients send (`token`). Instances that share
        this database without migrating it have none of their own: the Nginx in
        front of them all sends this one."""
        self.manage("migrate")
        issued = self.manage("issue_api_key", KEY_NAME)
        # The command prints the key alone.
        assert len(issued.split()) == 1, issued
        self.token = issued.strip()

    @property
    def upstream(self) -> str:
        """This app as a server line of Nginx's upstream.conf."""
        if self.socket is not None:
            return f"unix:{self.socket}"
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        super().start()
        with self.told_if_silent():
            if self.socket is None:
                wait_until_ok(f"http://127.0.0.1:{self.port}/healthz", alive=self.alive)
            else:
                wait_for_socket(self.socket, alive=self.alive)


class Worker(Process):
    """The service's task worker, started by its own bin/worker with its app's
    environment; `seconds` bound its start and its graceful shutdown."""

    def __init__(self, app: App, workdir: Path, seconds: int):
        self.port, self.seconds = free_port(), seconds
        env = {
            **app.env,
            "WORKER_METRICS_PORT": str(self.port),
            "METRICS_DIR": str(workdir / "worker-metrics"),
            "WORKER_SHUTDOWN_TIMEOUT": str(seconds),
        }
        super().__init__(["bin/worker"], app.cwd, env, workdir / "worker.log")

    def start(self) -> None:
        super().start()
        with self.told_if_silent():
            wait_until_ok(
                f"http://127.0.0.1:{self.port}/healthz", self.seconds, alive=self.alive
            )


class Nginx(Process):
    """Debian's Nginx running the nginx.conf of a private prefix (conf/nginx.conf),
    which listens on `port` of 127.0.0.1; the prefix goes once it stops.

    Nginx.in_front(project, upstreams) is the service's own deploy/nginx/; the
    benchmark also runs a configuration of its own this way.

    Its `token` is the one of the apps behind it (App.migrate)."""

    upstreams: tuple = ()

    def __init__(self, prefix: Path, port: int, status_port: int | None = None):
        self.port, self.status_port = port, status_port
        main = prefix / "conf" / "nginx.conf"
        command = ["nginx", "-p", prefix, "-c", main, "-e", "stderr"]
        subprocess.run([*command, "-t", "-q"], check=True, capture_output=True)
        super().__init__(
            [*command, "-g", "daemon off;"], prefix, service_env(), prefix / "nginx.log"
        )

    @classmethod
    def in_front(
        cls,
        project: Path,
        upstreams: list[App],
        trusted_proxies: tuple[str, ...] = ("127.0.0.1",),
    ) -> "Nginx":
        """The service's deploy/nginx/ in front of these app servers. By default
        the test's own address (127.0.0.1) stands for a trusted load balancer."""
        port, status_port = free_port(), free_port()
        prefix = readable_tempdir("edge-nginx-")
        conf = prefix / "conf"
        shutil.copytree(project / "deploy" / "nginx", conf)
        main = conf / "nginx.conf"
        text = main.read_text()
        assert text.count(PUBLIC_LISTEN) == text.count(STATUS_LISTEN) == 1
        main.write_text(
            text.replace(
                PUBLIC_LISTEN, f"listen 127.0.0.1:{port} default_server;"
            ).replace(STATUS_LISTEN, f"listen 127.0.0.1:{status_port};")
        )
        (conf / "upstream.conf").write_text(upstream_conf(upstreams))
        (prefix / STATIC_ROOT / "static").mkdir(parents=True)
        (conf / "trusted-proxies.conf").write_text(
            trusted_proxies_conf(trusted_proxies)
        )
        (conf / "deployment.conf").write_text(
            f'map "" $static_root {{ default {prefix / STATIC_ROOT}; }}\n'
        )
        nginx = cls(prefix, port, status_port)
        nginx.upstreams = tuple(upstreams)
        return nginx

    def drain(self, *apps: "App") -> None:
        """Sends no new request to `apps` (none: to every upstream again), as the
        Ansible rollout does before it restarts an instance: upstream.conf
        rewritten and reloaded. Returns once the workers of the old configuration
        have finished the requests they held and exited: from then on, nothing
        is on its way to `apps`."""
        old = set(children(self.process.pid))
        (self.cwd / "conf" / "upstream.conf").write_text(
            upstream_conf(self.upstreams, drained=apps)
        )
        self.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while old & set(children(self.process.pid)):
            assert time.monotonic() < deadline, self.output()[-3000:]
            time.sleep(0.05)

    @property
    def token(self) -> str | None:
        """The API key of the apps behind it: the first one that has one, since
        the instances of one deployment share its database."""
        tokens = (getattr(app, "token", None) for app in self.upstreams)
        return next(filter(None, tokens), None)

    @property
    def static_root(self) -> Path:
        """Where deploy/nginx/ serves /static/ from (Nginx.in_front)."""
        return self.cwd / STATIC_ROOT

    def start(self) -> None:
        super().start()
        wait_for_port(self.port)

    def stop(self, sig: int = signal.SIGQUIT, timeout: float = 60) -> int:
        code = super().stop(sig, timeout)
        shutil.rmtree(self.cwd)
        return code


def upstream_conf(upstreams, drained=()) -> str:
    """upstream.conf of deploy/nginx/ for these apps, those in `drained` marked
    down, as the Ansible role's edge/tasks/upstream.yml writes it."""
    # A refused instance is skipped for 1 s: rolling restarts here take seconds.
    return "".join(
        f"server {app.upstream} max_fails=1 fail_timeout=1s"
        f"{' down' if app in drained else ''};\n"
        for app in upstreams
    )


def trusted_proxies_conf(addresses: tuple[str, ...]) -> str:
    """trusted-proxies.conf of deploy/nginx/ for these addresses, as the chart and
    the Ansible role write it."""
    return (
        "geo $realip_remote_addr $from_trusted_proxy {\n    default 0;\n"
        + "".join(f"    {address} 1;\n" for address in addresses)
        + "}\n"
        + "".join(f"set_real_ip_from {address};\n" for address in addresses)
        + "real_ip_header X-Forwarded-For;\nreal_ip_recursive on;\n"
    )


def without_comments(conf: str) -> str:
    """An Nginx file's directives: what two renderings of it must agree on."""
    return "".join(
        line for line in conf.splitlines(keepends=True) if not line.startswith("#")
    )


def serve(cleanup: ExitStack, project: Path, workdir: Path, **env) -> tuple[App, Nginx]:
    """A migrated app behind its Nginx, both stopped when cleanup closes."""
    (app,), nginx = serve_instances(cleanup, project, workdir, 1, **env)
    return app, nginx


def serve_instances(
    cleanup: ExitStack, project: Path, workdir: Path, count: int, **env
) -> tuple[list[App], Nginx]:
    """`count` instances of the app on one database, which the first migrates,
    behind one Nginx; all stopped when cleanup closes."""
    name = "app" if count == 1 else "app-{}"
    apps = [App(project, workdir, name.format(n), **env) for n in range(count)]
    apps[0].migrate()
    for app in apps:
        # Before start(): a server that never answers is stopped too.
        cleanup.callback(app.stop)
        app.start()
    nginx = Nginx.in_front(project, apps)
    nginx.start()
    cleanup.callback(nginx.stop)
    return apps, nginx


def readable_tempdir(prefix: str) -> Path:
    """A temporary directory Nginx's workers can read: they run as nobody when the
    tests run as root, and pytest's own temporary directory is private to root."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


def request(
    server: App | Nginx,
    method: str,
    path: str,
    body=None,
    headers=None,
    token: str | _ServerToken | None = SERVER_TOKEN,
):
    """One HTTP request to a started app or Nginx; returns the response and body.
    It shows the server's API key (its `token`) unless given another `token`, or
    None for no Authorization header at all."""
    if token is SERVER_TOKEN:
        token = server.token
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    data = body if isinstance(body, bytes | None) else json.dumps(body).encode()
    connection.request(
        method,
        path,
        body=data,
        headers={
            "Content-Type": "application/json",
            **bearer(token),
            **(headers or {}),
        },
    )
    response = connection.getresponse()
    content = response.read()
    connection.close()
    return response, content


class EventStream:
    """An event stream (SSE) of an app or through Nginx, read one event at a
    time. Like a browser's EventSource, it keeps the last event id it got.
    `timeout`: longer than the keep-alive comments' interval (15 s), as a
    stream that says nothing for this long has hung."""

    def __init__(
        self, server: App | Nginx, last_event_id: str | None = None, timeout: float = 30
    ):
        headers = bearer(server.token)
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        self.connection = http.client.HTTPConnection(
            "127.0.0.1", server.port, timeout=timeout
        )
        self.connection.request("GET", "/api/items/events", headers=headers)
        self.response = self.connection.getresponse()
        self.buffer = b""
        self.last_id = last_event_id

    def next(self) -> dict | None:
        """The next event's fields ("retry" alone for the first), None once the
        stream has ended."""
        if self.response.status != 200:
            return None
        while b"\n\n" not in self.buffer:
            chunk = self.response.read1()
            if not chunk:
                return None
            self.buffer += chunk
        block, self.buffer = self.buffer.split(b"\n\n", 1)
        lines = block.decode().splitlines()
        fields = dict(line.split(": ", 1) for line in lines if line[:1] != ":")
        self.last_id = fields.get("id", self.last_id)
        return fields or self.next()  # a keep-alive comment is no event

    def close(self) -> None:
        self.connection.close()


def receive_until_closed(
    websocket: ClientConnection, timeout: float = 30
) -> tuple[list[dict], int | None]:
    """The JSON messages a WebSocket receives until the server closes it, and the
    close code it sent (None: none came); `timeout` bounds each wait."""
    messages = []
    try:
        while True:
            messages.append(json.loads(websocket.recv(timeout=timeout)))
    except ConnectionClosed as closed:
        return messages, None if closed.rcvd is None else closed.rcvd.code


def wait_until_ok(
    url: str | urllib.request.Request,
    seconds: float = 60,
    alive: Callable[[], bool] = lambda: True,
) -> None:
    """Until a GET of url (or of a Request, with its headers) answers 200; the
    last error is raised after `seconds`, or as soon as `alive()` is false (the
    server meant to answer has exited)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if time.monotonic() > deadline or not alive():
                raise
        time.sleep(0.2)


def wait_for_socket(
    path: Path, seconds: float = 60, alive: Callable[[], bool] = lambda: True
) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.connect(str(path))
                return
        except OSError:
            if time.monotonic() > deadline or not alive():
                raise
        time.sleep(0.2)
