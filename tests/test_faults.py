"""Dependencies that fail under a steady client load, on the real processes: a
PostgreSQL restart, a Redis restart. Each test states what the clients see during
the fault, how long the service takes to recover by itself, and that no
acknowledged write is lost or duplicated.

The stacks are the production configuration: PostgreSQL and Redis, two workers,
Nginx in front. Pairwise across servers is enough: the behaviour under test is
the service's (core.api, core.database, core.reads, core.cache, core.followups),
the same on every server. The numbers go to the test's output (pytest -s).
"""

import json
import subprocess
import tempfile
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path

import pytest
from load import Load, failures

from edge import App, serve
from matrix import default_combination, params
from services import PostgreSQL, Redis, postgres_bin

WORKERS = 2
# The service's pool timeout, shortened so that the outage is short too: a
# request waits this long for a connection before its 503.
POOL_TIMEOUT = 2
# How long each dependency stays down.
OUTAGE = 4
# Recovery, once the dependency is back, must take less than this (measured:
# see the note in each test).
RECOVERY_BOUND = 10


def production(server: str) -> dict:
    return {**default_combination(), "server": server, "database": "postgresql"}


def create_database(url: str, name: str) -> str:
    subprocess.run(
        [postgres_bin() / "createdb", f"--maintenance-db={url}/postgres", name],
        check=True,
        capture_output=True,
    )
    return f"{url}/{name}"


def item_names(database_url: str) -> dict[str, int]:
    """How many rows each item name has, read from the database itself."""
    result = subprocess.run(
        [
            *(postgres_bin() / "psql", database_url, "-Atc"),
            "SELECT name, count(*) FROM items_item GROUP BY name",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return {
        name: int(count)
        for name, count in (line.split("|") for line in result.stdout.splitlines())
    }


def workers_started(app: App) -> int:
    lines = [json.loads(line) for line in app.output().splitlines() if line[:1] == "{"]
    return sum(
        (line["logger"], line["message"]) == ("core.lifespan", "started")
        for line in lines
    )


def recovered_after(load: Load, since: float) -> float:
    """Seconds from `since` to the first request of each kind answered 2xx, for
    the slowest kind; waits for them."""
    deadline = since + RECOVERY_BOUND * 3
    while time.monotonic() < deadline:
        later = load.between(since, float("inf"))
        firsts = [
            min((a.started for a in later if a.method == method and a.ok), default=None)
            for method in ("GET", "POST")
        ]
        if None not in firsts:
            return max(firsts) - since
        time.sleep(0.2)
    pytest.fail(f"no success of each kind within {RECOVERY_BOUND * 3} s")


def acknowledged_writes_kept_once(load: Load, database_url: str) -> None:
    rows = item_names(database_url)
    created = [a.name for a in load.answers if a.method == "POST" and a.status == 201]
    assert created, "no write was acknowledged"
    lost = [name for name in created if rows.get(name, 0) == 0]
    duplicated = [name for name in created if rows.get(name, 0) > 1]
    assert (lost, duplicated) == ([], [])


@pytest.mark.parametrize("combination", params([production("gunicorn-uvicorn")]))
def test_postgresql_restart_answers_503_and_recovers_by_itself(
    combination, generated, redis_database, tmp_path
):
    with ExitStack() as cleanup:
        # Not under pytest's temporary directory: that one is private to root.
        workdir = cleanup.enter_context(
            tempfile.TemporaryDirectory(prefix="template-tests-faults-")
        )
        database = PostgreSQL(Path(workdir), durable=True)
        database.start()
        cleanup.callback(database.stop, "immediate")
        database_url = create_database(database.url, "faults")
        app, nginx = serve(
            cleanup,
            generated(combination),
            tmp_path,
            DATABASE_URL=database_url,
            REDIS_URL=redis_database(),
            WEB_CONCURRENCY=str(WORKERS),
            DATABASE_POOL_TIMEOUT=str(POOL_TIMEOUT),
        )
        with Load(nginx.port, token=nginx.token) as load:
            time.sleep(3)
            down = time.monotonic()
            database.stop("fast")
            time.sleep(OUTAGE)
            database.start()
            up = time.monotonic()
            recovery = recovered_after(load, up)
            time.sleep(3)
        # A request still running when PostgreSQL stops (a read with an API key
        # is two queries in a row) waits for the pool like those sent during it.
        before, during = load.ended_before(down), load.between(down, up)
        after = load.between(up + recovery, float("inf"))
        print(
            f"\nPostgreSQL down {up - down:.1f} s: {len(failures(during))} of "
            f"{len(during)} answers 503; recovered {recovery:.1f} s after its return; "
            f"{len(load.answers)} requests in all"
        )
        assert failures(before) == []
        assert failures(after) == []
        # While it is down, and until the pools have reconnected: 503 with
        # Retry-After, never a 500, a 502 or a hang.
        unexpected = [
            a
            for a in failures(load.answers)
            if (a.status, a.retry_after) != (503, "1")
            or not isinstance(a.body, dict)
            or a.body.get("error") != "database_unavailable"
        ]
        assert unexpected == []
        assert failures(during), "the outage was not seen: nothing was tested"
        assert max(a.seconds for a in load.answers) < POOL_TIMEOUT + 3
        assert recovery < RECOVERY_BOUND
        acknowledged_writes_kept_once(load, database_url)
        # No worker was restarted: the pools recovered in place.
        assert workers_started(app) == WORKERS, app.output()


@pytest.mark.parametrize("combination", params([production("granian")]))
def test_redis_restart_is_cache_misses_and_no_error(
    combination, generated, postgres_url, tmp_path
):
    redis = Redis()
    redis.start()
    with ExitStack() as cleanup:
        cleanup.callback(redis.stop)
        database_url = create_database(postgres_url, "faults_redis")
        app, nginx = serve(
            cleanup,
            generated(combination),
            tmp_path,
            DATABASE_URL=database_url,
            REDIS_URL=f"{redis.url}/0",
            WEB_CONCURRENCY=str(WORKERS),
        )
        with Load(nginx.port, token=nginx.token) as load:
            time.sleep(3)
            down = time.monotonic()
            redis.stop()
            time.sleep(OUTAGE / 2)
            readiness = read_json(f"http://127.0.0.1:{app.port}/readyz")
            time.sleep(OUTAGE / 2)
            redis.start()
            up = time.monotonic()
            time.sleep(3)
        during = load.between(down, up)
        print(
            f"\nRedis down {up - down:.1f} s: {len(failures(during))} of "
            f"{len(during)} answers failed; {len(load.answers)} requests in all"
        )
        # The cache is a miss and the events are lost; every request succeeds.
        assert failures(load.answers) == []
        assert readiness == {
            "status": "degraded",
            "checks": {"database": "ok", "redis": "unavailable"},
        }
        metrics = read_text(f"http://127.0.0.1:{app.port}/metrics")
        # Counted: the gets that missed for it, the events that were not published.
        assert sample(metrics, "django_cache_errors_total", 'operation="get"') > 0
        assert sample(metrics, "django_followups_failed_total", 'step="publish"') > 0
        acknowledged_writes_kept_once(load, database_url)
        assert workers_started(app) == WORKERS, app.output()


def read_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


def read_json(url: str) -> dict:
    return json.loads(read_text(url))


def sample(metrics: str, name: str, labels: str) -> float:
    """The value of one sample of Prometheus's text format, 0 if absent."""
    prefix = f"{name}{{{labels}}} "
    found = [line for line in metrics.splitlines() if line.startswith(prefix)]
    return float(found[0].removeprefix(prefix)) if found else 0.0
