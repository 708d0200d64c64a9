"""Each generated service's own test suite, on real servers and on embedded defaults.

matrix.suite_combinations (the rows of the pairwise covering set in which every
choice of each option but the server meets every choice of every other, and each
server is) runs against a real PostgreSQL or MariaDB (if it chose one) and Redis,
task queues against their real broker and worker; its services without tasks also
run on SQLite and the in-memory channel layer (a task worker needs a database
server).
Every row of the covering set gets the cheap checks (test_generation.py).
"""

import re
import subprocess

import pytest

from harness import check_steps, run, service_env
from matrix import TASK_BROKER, name, params, suite_combinations
from services import create_database

# The session fixture of each database server (conftest.py), asked for only by
# the combinations that choose it: a worker starts no server it does not use.
SERVER_URLS = {"postgresql": "postgres_url", "mysql": "mysql_url"}


def run_suite(project, env):
    """The suite as the service's CI runs it: `bin/check test`."""
    return check_steps(project, "test", env=env).stdout


def database_for(combination: dict, server_url: str) -> str:
    """One database per combination, made as in production: the suite's test
    database is Django's own, but its deploy checks open this one."""
    return create_database(server_url, re.sub(r"\W", "_", name(combination)))


@pytest.mark.parametrize("combination", params(suite_combinations()))
def test_suite_passes_on_real_servers(combination, generated, redis_database, request):
    project = generated(combination)
    env = service_env(REDIS_URL=redis_database())
    expected_database = combination["database"]
    if expected_database in SERVER_URLS:
        server_url = request.getfixturevalue(SERVER_URLS[expected_database])
        env["DATABASE_URL"] = database_for(combination, server_url)
    output = run_suite(project, env)
    assert f"database: {expected_database}" in output
    assert "channel layer: RedisChannelLayer" in output
    assert " passed" in output
    if expected_database != "sqlite":
        # Tests that need a database server skip on SQLite only: here every one ran.
        assert " skipped" not in output


@pytest.mark.parametrize(
    "combination",
    params([next(c for c in suite_combinations() if c["database"] == "mysql")]),
)
def test_suite_passes_on_mysql_itself(
    combination, generated, redis_database, mysql_itself_url
):
    """database=mysql is MariaDB or MySQL: the suites above run on MariaDB, one
    runs again on MySQL, where the two differ (ids from a many-row INSERT, the
    statement time limit, a statement whose client left)."""
    env = service_env(
        REDIS_URL=redis_database(),
        DATABASE_URL=database_for(combination, mysql_itself_url),
    )
    output = run_suite(generated(combination), env)
    assert "database: mysql" in output
    assert " passed" in output
    assert " skipped" not in output


@pytest.mark.parametrize(
    "combination",
    params([c for c in suite_combinations() if c["tasks"] == "none"]),
)
def test_suite_passes_on_embedded_defaults(combination, generated):
    output = run_suite(generated(combination), service_env())
    assert "database: sqlite" in output
    assert "channel layer: InMemoryChannelLayer" in output
    assert " passed" in output


def one_per_redis_broker() -> list[dict]:
    """A suite combination on PostgreSQL for each task library whose broker is Redis."""
    rows = {}
    for combination in suite_combinations():
        tasks = combination["tasks"]
        on_postgresql = combination["database"] == "postgresql"
        if TASK_BROKER.get(tasks) == "redis" and on_postgresql:
            rows.setdefault(tasks, combination)
    return list(rows.values())


def commands_processed(server) -> int:
    info = subprocess.run(
        [
            *("redis-cli", "--tls", "--cacert", str(server.ca_file)),
            *("-h", "127.0.0.1", "-p", str(server.port)),
            *("--user", server.ACL_USER, "--pass", server.ACL_PASSWORD),
            *("--no-auth-warning", "info", "stats"),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return int(re.search(r"total_commands_processed:(\d+)", info)[1])


@pytest.mark.parametrize("combination", params(one_per_redis_broker()))
def test_redis_is_reached_with_tls_and_an_acl_user(
    combination, generated, secure_redis, secure_redis_database, postgres_url
):
    """REDIS_URL as the service's README tells a team to set it: rediss://, an ACL
    user of the service's own (name and password percent-encoded), the server's
    certificate from a private CA the service trusts through SSL_CERT_FILE. The
    service's tests that use Redis, the cache, the channel layer, readiness, and
    the task broker with its worker, pass on that Redis, which takes nothing else."""
    project = generated(combination)
    database = re.sub(r"\W", "_", name(combination)) + "_redis_tls"
    env = service_env(
        REDIS_URL=secure_redis_database(),
        SSL_CERT_FILE=str(secure_redis.ca_file),
        DATABASE_URL=create_database(postgres_url, database),
    )
    before = commands_processed(secure_redis)
    tests = ["tests/test_cache.py", "tests/test_layers.py", "tests/test_health.py"]
    output = run(
        ["uv", "run", "--locked", "pytest", *tests, "tests/test_tasks.py", "-q"],
        project,
        env=env,
        timeout=900,
    ).stdout
    assert " passed" in output
    assert " skipped" not in output, output
    assert commands_processed(secure_redis) > before
