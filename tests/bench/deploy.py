"""What the benchmark runs: generated services with the bench's own files, their
servers (the service's bin/serve, or Gunicorn for the WSGI baselines), the
service's own Nginx in front, an Nginx answering by itself, the slow upstream.
Everything listens on 127.0.0.1."""

import os
import re
import secrets
import shutil
import signal
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

from cookiecutter.main import cookiecutter

from edge import Nginx, Process, readable_tempdir, wait_for_socket, wait_until_ok
from harness import run, service_env
from matrix import TEMPLATE_DIR, default_combination
from services import free_port, wait_for_port

OVERLAY = Path(__file__).resolve().parent / "overlay"
# The template just before its native async data path (core.reads, redis.asyncio
# in core.cache, one-hop transactional writes): the before-* configurations, so
# that "no slower than the service was" is a ratio within one run.
BEFORE_COMMIT = "2ea27e6"
# WebSockets for the capacity scenario; the database is generate()'s.
BENCH_CHOICES = {"websockets": "yes"}
# The databases a service is generated for (the template's `database` choices
# with a server of their own): every scenario runs on the first, the database
# scenarios (scenarios.ON_EVERY_DATABASE) on each.
DATABASES = ("postgresql", "mysql")
# config/asgi.py takes its handler and connection counter from bench_app.py.
ASGI_PATCHES = (
    ("from core.handler import get_asgi_application", "from bench_app import "),
    ("from core.connections import count_connections", "from bench_app import "),
)
# Each run measures the request path, not worker recycling (bin/serve recycles
# after 10 000 requests, which a 10 s run at 5 000 req/s would hit), and the
# capacity scenario what a server holds, not the service's per-worker caps on
# WebSockets and event streams (core/connections.py). Nor is a worker recycled
# for its memory (bin/serve's WORKER_MAX_RSS_MB): Granian's worker passes its 1 GiB
# with about 5,000 idle WebSockets, and the idle curve holds more.
STEADY = {
    "MAX_REQUESTS": "1000000000",
    "GRACEFUL_TIMEOUT": "5",
    "WEBSOCKET_MAX_CONNECTIONS": "1000000",
    "SSE_MAX_STREAMS": "1000000",
    "WORKER_MAX_RSS_MB": "0",
}


def project_name(server: str, database: str = DATABASES[0]) -> str:
    """The name of the service for `server` on `database` among a run's projects
    (and its directory): the server's name alone on the first database."""
    return server if database == DATABASES[0] else f"{server}-{database}"


def generate(
    server: str,
    workdir: Path,
    template: Path = TEMPLATE_DIR,
    name: str = "",
    database: str = DATABASES[0],
) -> Path:
    """The service for `server` on `database`, with the bench's files, in
    workdir/<name> (project_name() unless told); from `template`, this checkout of
    the template unless told another one."""
    combination = {
        **default_combination(),
        **BENCH_CHOICES,
        "server": server,
        "database": database,
    }
    # cookiecutter imports the template's Jinja extension, which tells its hooks
    # where the template is (hooks.template_dir), by module name: a process that
    # generated from this checkout would hand a second template (template_at())
    # the first's from sys.modules, and its hooks would check its options with
    # this checkout's rules (which refuse its missing grafana_url).
    for module in [name for name in sys.modules if name.split(".")[0] == "hooks"]:
        del sys.modules[module]
    project = Path(
        cookiecutter(
            str(template),
            no_input=True,
            extra_context=combination,
            output_dir=str(workdir / (name or project_name(server, database))),
            default_config=True,
        )
    )
    run(["uv", "sync", "--locked", "--quiet"], project)
    for source in OVERLAY.glob("*.py"):
        shutil.copy(source, project / source.name)
    asgi = project / "config" / "asgi.py"
    text = asgi.read_text()
    for old, prefix in ASGI_PATCHES:
        assert text.count(old) == 1, f"{old!r} not found once in {asgi}"
        text = text.replace(old, prefix + old.rsplit(" ", 1)[-1])
    asgi.write_text(text)
    return project


@contextmanager
def template_at(commit: str):
    """A checkout of the template at `commit` (a detached git worktree), removed
    afterwards."""
    with tempfile.TemporaryDirectory(prefix="bench-template-") as tmp:
        checkout = Path(tmp) / "template"
        git = ["git", "-C", str(TEMPLATE_DIR)]
        run([*git, "worktree", "add", "--detach", str(checkout), commit], TEMPLATE_DIR)
        try:
            yield checkout
        finally:
            run([*git, "worktree", "remove", "--force", str(checkout)], TEMPLATE_DIR)


def install_gunicorn(project: Path) -> None:
    """The WSGI baselines' server, beside the service's own dependencies."""
    run(["uv", "pip", "install", "--quiet", "gunicorn==27.0.1"], project)


class Server(Process):
    """A web server of the benchmark on a free port (or a unix socket)."""

    def __init__(self, name: str, command: list, project: Path, env: dict, log: Path):
        super().__init__(command, project, env, log)
        self.name = name
        self.port = int(env.get("PORT", "0"))
        self.socket = env.get("UDS")

    @property
    def upstream(self) -> str:
        return f"unix:{self.socket}" if self.socket else f"127.0.0.1:{self.port}"

    def start(self) -> None:
        super().start()
        if self.socket:
            wait_for_socket(Path(self.socket))
        else:
            wait_until_ok(f"http://127.0.0.1:{self.port}/healthz")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        return super().stop(sig, timeout)

    def pids(self) -> list[int]:
        """The server's process and all its descendants."""
        return process_tree(self.process.pid)

    def workers(self) -> list[int]:
        """The server's worker processes: its descendants but Uvicorn's
        multiprocessing resource tracker."""
        workers = []
        for pid in self.pids()[1:]:
            try:
                command = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"resource_tracker" not in command:
                workers.append(pid)
        return workers


def base_env(project: Path, logdir: Path, **extra: str) -> dict:
    return service_env(
        PATH=f"{project / '.venv' / 'bin'}:{service_env()['PATH']}",
        HOST="127.0.0.1",
        PORT=str(free_port()),
        GRANIAN_METRICS_PORT=str(free_port()),
        DJANGO_SETTINGS_MODULE="bench_settings",
        # As in production: the server reads no .env (bin/serve), so it is given
        # its key.
        DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
        DJANGO_DEBUG="false",
        # Plain HTTP from the load generator; Nginx would set X-Forwarded-Proto.
        DJANGO_SECURE_SSL_REDIRECT="false",
        # The load generator, WebSockets' pages included, is on 127.0.0.1.
        DJANGO_ALLOWED_HOSTS="127.0.0.1",
        DJANGO_WEBSOCKET_ALLOWED_ORIGINS="127.0.0.1",
        METRICS_DIR=str(logdir / f"metrics-{free_port()}"),
        # edge.Process.abort_with_stacks(); costs nothing until a fatal signal.
        PYTHONFAULTHANDLER="1",
        **{**STEADY, **extra},
    )


def asgi_server(name, project, logdir, env) -> Server:
    """The generated service, started by its own bin/serve."""
    env = base_env(project, logdir, **env)
    return Server(name, ["bin/serve"], project, env, logdir / f"{name}.log")


def wsgi_server(name, project, logdir, env, worker: str) -> Server:
    """The same service as WSGI under Gunicorn: 2 sync workers, or 2 gthread
    workers of 16 threads each."""
    env = base_env(project, logdir, **env)
    command = [
        str(project / ".venv" / "bin" / "gunicorn"),
        "bench_wsgi:application",
        "--bind",
        f"127.0.0.1:{env['PORT']}",
        "--workers",
        "2",
        "--worker-class",
        worker,
        "--backlog",
        "2048",
        "--timeout",
        "60",
        "--no-control-socket",
    ]
    if worker == "gthread":
        command += ["--threads", "16", "--keep-alive", "60"]
    return Server(name, command, project, env, logdir / f"{name}.log")


# Nginx answering the tiny JSON by itself: the ceiling of this machine.
NGINX_ALONE = """worker_processes auto;
error_log stderr;
pid {prefix}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            default_type application/json;
            return 200 '{{"status": "ok"}}';
        }}
    }}
}}
"""


def nginx_alone() -> Nginx:
    """NGINX_ALONE on a free port."""
    port, prefix = free_port(), readable_tempdir("bench-nginx-")
    (prefix / "conf").mkdir()
    (prefix / "conf" / "nginx.conf").write_text(
        NGINX_ALONE.format(prefix=prefix, port=port)
    )
    return Nginx(prefix, port)


class Upstream(Process):
    """bench.upstream in a process of its own, answering after `delay` seconds."""

    def __init__(self, delay: float, logdir: Path):
        self.port = free_port()
        command = [sys.executable, "-m", "bench.upstream", str(self.port), str(delay)]
        env = {**service_env(), "PYTHONPATH": str(Path(__file__).parent.parent)}
        super().__init__(command, Path.cwd(), env, logdir / "upstream.log")

    def start(self) -> None:
        super().start()
        wait_for_port(self.port)


def process_tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, pending = [], [root]
    while pending:
        pid = pending.pop()
        tree.append(pid)
        pending.extend(children.get(pid, []))
    return tree


def cpu_by_process(pids: list[int]) -> dict[int, float]:
    """User and system CPU seconds of each of these processes so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    seconds = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        seconds[pid] = (int(fields[11]) + int(fields[12])) / ticks
    return seconds


def cpu_seconds(pids: list[int]) -> float:
    return sum(cpu_by_process(pids).values())


def tree_cpu_seconds(root: int) -> float:
    """User and system CPU seconds of `root` and its descendants so far, those
    that have exited and been waited for included (a database server's
    connections come and go)."""
    ticks, total = os.sysconf("SC_CLK_TCK"), 0
    for pid in process_tree(root):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(field) for field in fields[11:15])
    return total / ticks


# The states of /proc/net/tcp's `st` column used here.
LISTEN, ESTABLISHED = "0A", "01"


def _sockets(port: int, state: str) -> set[str]:
    """The sockets on 127.0.0.1:`port` in `state`, as their descriptors' links
    read ("socket:[inode]")."""
    local = f"0100007F:{port:04X}"
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local and fields[3] == state:
            inodes.add(f"socket:[{fields[9]}]")
    return inodes


def listening_pid(port: int) -> int:
    """The process that listens on 127.0.0.1:`port` (a database server started by
    tests/services.py, which hands out its URL alone)."""
    inodes = _sockets(port, LISTEN)
    for fd in Path("/proc").glob("[0-9]*/fd/*"):
        try:
            if os.readlink(fd) in inodes:
                return int(fd.parent.parent.name)
        except OSError:
            continue
    raise LookupError(f"no process listens on 127.0.0.1:{port}")


def connections_by_process(pids: list[int], port: int) -> dict[int, int]:
    """How many established connections to 127.0.0.1:`port` each process holds
    (a server's workers share its listening socket)."""
    inodes = _sockets(port, ESTABLISHED)
    held = {}
    for pid in pids:
        try:
            links = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
        except OSError:
            continue
        held[pid] = sum(link in inodes for link in links)
    return held


def file_room(pid: int) -> int:
    """How many more files the process may open: its soft RLIMIT_NOFILE less the
    descriptors it holds."""
    limits = Path(f"/proc/{pid}/limits").read_text()
    limit = int(re.search(r"^Max open files\s+(\d+)", limits, re.M).group(1))
    return limit - len(list(Path(f"/proc/{pid}/fd").iterdir()))


def busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (every core, every process:
    the other work on a shared host too), from /proc/stat."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    # user nice system idle iowait irq softirq steal: all but idle and iowait.
    busy = sum(fields[:8]) - fields[3] - fields[4]
    return busy / os.sysconf("SC_CLK_TCK")


def resident_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            statm = Path(f"/proc/{pid}/statm").read_text().split()
        except OSError:
            continue
        total += int(statm[1]) * os.sysconf("SC_PAGE_SIZE")
    return total


def migrate_and_seed(project: Path, database_url: str, items: int = 100) -> str:
    """Migrates the shared database, adds `items` items, and returns the API key
    issued for the load generator (every configuration of this template reads
    it from the same database; those from before it ignore it)."""
    env = service_env(DATABASE_URL=database_url)
    python = str(project / ".venv" / "bin" / "python")
    run([python, "manage.py", "migrate", "--verbosity", "0"], project, env)
    seed = (
        "from items.models import Category, Item\n"
        "category, _ = Category.objects.get_or_create(name='bench')\n"
        f"Item.objects.bulk_create([Item(name=f'item {{n}}', category=category, "
        f"price='1.00') for n in range({items})])\n"
    )
    run([python, "manage.py", "shell", "-c", seed], project, env)
    issued = run([python, "manage.py", "issue_api_key", "bench"], project, env).stdout
    # The command prints the key alone.
    assert len(issued.split()) == 1, issued
    return issued.strip()
