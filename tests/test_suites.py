"""Each generated service's own test suite, on real servers and on embedded defaults.

matrix.suite_combinations (the rows of the pairwise covering set in which every
choice of each option but the server meets every choice of every other, and each
server is) runs against a real PostgreSQL (if it chose it) and Redis, task queues
against their real broker and worker; its services without tasks also run on
SQLite and the in-memory channel layer (a task worker needs a database server).
Every row of the covering set gets the cheap checks (test_generation.py).
"""

import re

import pytest

from harness import check_steps, service_env
from matrix import name, params, suite_combinations


def run_suite(project, env):
    """The suite as the service's CI runs it: `bin/check test`."""
    return check_steps(project, "test", env=env).stdout


@pytest.mark.parametrize("combination", params(suite_combinations()))
def test_suite_passes_on_real_servers(
    combination, generated, postgres_url, redis_database
):
    project = generated(combination)
    env = service_env(REDIS_URL=redis_database())
    expected_database = "sqlite"
    if combination["database"] == "postgresql":
        # One database per combination: suites never share a test database.
        database = re.sub(r"\W", "_", name(combination))
        env["DATABASE_URL"] = f"{postgres_url}/{database}"
        expected_database = "postgresql"
    output = run_suite(project, env)
    assert f"database: {expected_database}" in output
    assert "channel layer: RedisChannelLayer" in output
    assert " passed" in output
    if expected_database == "postgresql":
        # Tests that need PostgreSQL skip on SQLite only: here every one ran.
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
