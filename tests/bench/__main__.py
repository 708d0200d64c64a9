"""python -m bench [--quick] [--only SCENARIO,...] [--out DIR]: generate the
services (one per server, and per database for the scenarios that run on each),
start their database servers, run every scenario (or those named), write
results.json, results.md and the plots (tests/bench.sh runs this)."""

import argparse
import json
import os
import platform
import re
import subprocess
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlsplit

from bench import report
from bench.deploy import (
    BEFORE_COMMIT,
    DATABASES,
    Upstream,
    generate,
    listening_pid,
    migrate_and_seed,
    project_name,
    template_at,
)
from bench.load import require_wrk
from bench.scenarios import (
    BEFORE,
    ON_EVERY_DATABASE,
    SCENARIOS,
    SERVERS,
    WITH_BEFORE,
    Cells,
    Database,
    Settings,
    run_all,
)
from matrix import TEMPLATE_DIR
from services import create_database, mariadb, postgresql, redis

RESULTS = Path(__file__).resolve().parent / "results"
FULL = Settings(
    seconds=10,
    warmup=2,
    rounds=5,
    sse_clients=100,
    idle_counts=(1_000, 10_000),
    idle_most=50_000,
    idle_cpu_seconds=20,
    broadcast_websockets=10_000,
    broadcast_streams=1_000,
    broadcast_events=20,
    # 10,000 WebSockets cost each of two workers about 2 s of CPU per event
    # (tests/bench/notes.md): at 1 s apart the events would queue.
    broadcast_spacing=3.0,
)
QUICK = Settings(
    seconds=3,
    warmup=1,
    rounds=2,
    sse_clients=20,
    idle_counts=(100, 1_000),
    idle_most=2_000,
    idle_cpu_seconds=3,
    broadcast_websockets=1_000,
    broadcast_streams=200,
    broadcast_events=5,
    broadcast_spacing=1.0,
)
# The throwaway server of each database of DATABASES (tests/services.py): each
# yields the URL of a user that may create databases.
DATABASE_SERVERS = {"postgresql": postgresql, "mysql": mariadb}


def _output(command: list) -> str:
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        return "not installed"
    return (result.stdout + result.stderr).strip()


def _locked_version(project: Path, package: str) -> str:
    lock = (project / "uv.lock").read_text()
    match = re.search(rf'name = "{package}"\nversion = "([^"]+)"', lock)
    return match.group(1) if match else "?"


def machine(projects: dict) -> dict:
    cpu = re.search(r"Model name:\s+(.+)", _output(["lscpu"]))
    uvicorn = projects["uvicorn"]
    found = {}
    if mysql := projects.get(project_name("uvicorn", "mysql")):
        found = {
            "mariadb": _output(["sh", "-c", "PATH=$PATH:/usr/sbin mariadbd --version"])
            .split(" Ver ")[-1]
            .split(" for ")[0],
            "mysqlclient": _locked_version(mysql, "mysqlclient"),
            "asyncmy": _locked_version(mysql, "asyncmy"),
        }
    return {
        "cpu": cpu.group(1) if cpu else platform.processor(),
        "cores": os.cpu_count(),
        "memory_gib": round(
            os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1
        ),
        "kernel": platform.release(),
        "os": _output(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "python": _output([str(uvicorn / ".venv" / "bin" / "python"), "--version"]),
        "django": _locked_version(uvicorn, "django"),
        "uvicorn": _locked_version(uvicorn, "uvicorn"),
        "granian": _locked_version(projects["granian"], "granian"),
        "gunicorn": _locked_version(projects["gunicorn-uvicorn"], "gunicorn"),
        "psycopg": _locked_version(uvicorn, "psycopg"),
        "nginx": _output(["nginx", "-v"]).removeprefix("nginx version: "),
        "wrk": _output(["wrk", "--version"]).splitlines()[0],
        "postgresql": _output(["sh", "-c", "ls /usr/lib/postgresql"]),
        "redis": _output(["redis-server", "--version"]).split(" sha=")[0],
        **found,
    }


def template_state() -> dict:
    """The commit the services were generated from, and the service's files that
    differed from it then: the bench generates from this checkout as it is."""
    git = ["git", "-C", str(TEMPLATE_DIR)]
    status = subprocess.run(
        [*git, "status", "--porcelain", "--", "{{cookiecutter.project}}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {
        "commit": _output([*git, "rev-parse", "--short", "HEAD"]),
        # Each line: two status letters, a space, the path.
        "uncommitted": [line[3:] for line in status.splitlines()],
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short cells, few clients")
    parser.add_argument(
        "--only",
        metavar="SCENARIO,...",
        help=f"run only these scenarios, of: {', '.join(SCENARIOS)}",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    # tests/bench.sh runs this in tests/: a relative --out is where it was called.
    args.out = Path(os.environ.get("BENCH_CALLER_DIR", ".")) / args.out
    wanted = args.only.split(",") if args.only else list(SCENARIOS)
    if unknown := [name for name in wanted if name not in SCENARIOS]:
        parser.error(f"unknown scenarios: {', '.join(unknown)}")
    # In the usual order whatever the order asked: writes come after the reads.
    names = [name for name in SCENARIOS if name in wanted]
    require_wrk()
    settings = QUICK if args.quick else FULL
    began, load_before = time.time(), os.getloadavg()
    # Before the services are generated from it: the checkout may change during
    # the run.
    template = template_state()
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        workdir = Path(tmp)
        logdir = workdir / "logs"
        logdir.mkdir()
        # Nginx's workers (nobody) reach the app's unix socket there.
        for directory in (workdir, logdir):
            directory.chmod(0o755)
        databases = DATABASES
        if not any(name in ON_EVERY_DATABASE for name in names):
            databases = DATABASES[:1]
        projects = {
            project_name(server, database): generate(server, workdir, database=database)
            for database in databases
            for server in SERVERS
        }
        if any(name in WITH_BEFORE for name in names):
            # The checkout is only needed while the service is generated.
            with template_at(BEFORE_COMMIT) as template:
                projects[BEFORE] = generate("uvicorn", workdir, template, BEFORE)
        with ExitStack() as stack:
            redis_url = stack.enter_context(redis()).url
            served = {}
            for database in databases:
                # Not under workdir: that one is private to root, and each
                # database server runs as its own user (postgres, mysql).
                directory = stack.enter_context(
                    tempfile.TemporaryDirectory(prefix=f"bench-{database}-")
                )
                url = stack.enter_context(DATABASE_SERVERS[database](Path(directory)))
                database_url = create_database(url, "bench")
                project = projects[project_name("uvicorn", database)]
                token = migrate_and_seed(project, database_url)
                pid = listening_pid(urlsplit(url).port)
                served[database] = Database(database_url, token, pid)
            upstream = Upstream(0.05, logdir)
            upstream.start()
            try:
                env = {
                    # Every one of gthread's 16 threads can hold a connection.
                    "DATABASE_POOL_MAX_SIZE": "16",
                    "BENCH_UPSTREAM_PORT": str(upstream.port),
                }
                cells = Cells(
                    projects,
                    logdir,
                    env,
                    settings,
                    upstream.process.pid,
                    redis_url,
                    served,
                )
                run_all(cells, names)
            finally:
                upstream.stop()
        run = {
            "mode": "quick" if args.quick else "full",
            "settings": settings.__dict__,
            "scenarios": names,
            "before_commit": BEFORE_COMMIT,
            "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(began)),
            "minutes": round((time.time() - began) / 60, 1),
            "load_before": load_before,
            "load_after": os.getloadavg(),
            "machine": machine(projects),
            "template": template,
            "rows": cells.rows,
        }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(run, indent=1) + "\n")
    report.write(run, args.out)
    print(f"bench: results in {args.out}")


if __name__ == "__main__":
    main()
