"""python -m bench [--quick] [--only SCENARIO,...] [--out DIR]: generate the
services, run every scenario (or those named), write results.json, results.md and
the plots (tests/bench.sh runs this)."""

import argparse
import json
import os
import platform
import re
import subprocess
import tempfile
import time
from pathlib import Path

from bench import report
from bench.deploy import (
    BEFORE_COMMIT,
    Upstream,
    generate,
    migrate_and_seed,
    template_at,
)
from bench.load import require_wrk
from bench.scenarios import (
    BEFORE,
    SCENARIOS,
    SERVERS,
    WITH_BEFORE,
    Cells,
    Settings,
    run_all,
)
from services import postgresql, redis

RESULTS = Path(__file__).resolve().parent / "results"
FULL = Settings(seconds=10, warmup=2, websockets=10_000, sse_clients=100)
QUICK = Settings(seconds=3, warmup=1, websockets=1_000, sse_clients=20)


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
    wanted = args.only.split(",") if args.only else list(SCENARIOS)
    if unknown := [name for name in wanted if name not in SCENARIOS]:
        parser.error(f"unknown scenarios: {', '.join(unknown)}")
    # In the usual order whatever the order asked: writes come after the reads.
    names = [name for name in SCENARIOS if name in wanted]
    require_wrk()
    settings = QUICK if args.quick else FULL
    began, load_before = time.time(), os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        workdir = Path(tmp)
        logdir = workdir / "logs"
        logdir.mkdir()
        # Nginx's workers (nobody) reach the app's unix socket there.
        for directory in (workdir, logdir):
            directory.chmod(0o755)
        projects = {server: generate(server, workdir) for server in SERVERS}
        if any(name in WITH_BEFORE for name in names):
            # The checkout is only needed while the service is generated.
            with template_at(BEFORE_COMMIT) as template:
                projects[BEFORE] = generate("uvicorn", workdir, template, BEFORE)
        # Not under workdir: that one is private to root, and PostgreSQL runs as
        # the postgres user.
        with (
            tempfile.TemporaryDirectory(prefix="bench-postgres-") as pgdir,
            postgresql(Path(pgdir)) as url,
            redis() as redis_url,
        ):
            database_url = f"{url}/postgres"
            token = migrate_and_seed(projects["uvicorn"], database_url)
            upstream = Upstream(0.05, logdir)
            upstream.start()
            try:
                env = {
                    "DATABASE_URL": database_url,
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
                    f"{redis_url}/0",
                    token,
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
            "rows": cells.rows,
        }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(run, indent=1) + "\n")
    report.write(run, args.out)
    print(f"bench: results in {args.out}")


if __name__ == "__main__":
    main()
