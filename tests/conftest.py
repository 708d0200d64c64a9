"""Fixtures of the template tests: generated services, real servers to test them on."""

import shutil
import tempfile
from pathlib import Path

import pytest

import services
from harness import generate_service, run
from matrix import CHOICES, name

# Every use of Redis on a worker gets a database of its own: with every test on one
# worker that is about 60 (a suite per suite combination, a stack per server and
# per queue, a stack per lifecycle test), well beyond Redis's default 16.
REDIS_DATABASES = 256


def pytest_sessionstart(session):
    missing = [
        f"python{version}"
        for version in CHOICES["python_version"]
        if shutil.which(f"python{version}") is None
    ]
    tools = ("uv", "redis-server", "shellcheck", "hadolint", "nginx", "gixy", "node")
    monitoring = ("prometheus", "promtool", "prometheus-nginx-exporter")
    for tool in (*tools, *monitoring):
        if shutil.which(tool) is None:
            missing.append(tool)
    if missing:
        pytest.exit(
            f"not on PATH: {', '.join(missing)}. Run the tests with tests/run.sh, "
            "which installs them.",
            returncode=2,
        )


@pytest.fixture(scope="session")
def generated(tmp_path_factory):
    """Generates the service of a combination, with its virtualenv, once per worker."""
    services_by_name = {}

    def make(combination: dict) -> Path:
        key = name(combination)
        if key not in services_by_name:
            project = generate_service(combination, tmp_path_factory.mktemp(key))
            run(["uv", "sync", "--locked", "--quiet"], project)
            services_by_name[key] = project
        return services_by_name[key]

    return make


@pytest.fixture(scope="session")
def postgres_url():
    # Not under pytest's temporary directory: that one is private to root.
    with (
        tempfile.TemporaryDirectory(prefix="template-tests-postgres-") as workdir,
        services.postgresql(Path(workdir)) as url,
    ):
        yield url


@pytest.fixture(scope="session")
def mysql_url():
    """A MariaDB server of this worker, started on the first test that asks for
    it: the URL of a user that may create databases, without a database."""
    with (
        tempfile.TemporaryDirectory(prefix="template-tests-mysql-") as workdir,
        services.mariadb(Path(workdir)) as url,
    ):
        yield url


@pytest.fixture(scope="session")
def mysql_itself_url():
    """A MySQL server (not MariaDB) of this worker, in a container: the URL of a
    user that may create databases, without a database."""
    with services.mysql_itself() as url:
        yield url


@pytest.fixture(scope="session")
def mysql_checks_url(mysql_url):
    """A database on this worker's MariaDB for the static checks of MySQL
    services: Django's checks ask the server its version (bin/check django)."""
    return services.create_database(mysql_url, "checks")


@pytest.fixture(scope="session")
def redis_database():
    """A function that gives the URL of a database of this worker's Redis server that
    no other use has had: tests choose no database numbers by hand."""
    with services.redis(REDIS_DATABASES) as server:
        yield services.RedisDatabases(server.url, REDIS_DATABASES).new


@pytest.fixture(scope="session")
def secure_redis(tmp_path_factory):
    """This worker's Redis with TLS only and an ACL user (services.Redis)."""
    with services.redis(tls_in=tmp_path_factory.mktemp("redis-tls")) as server:
        yield server


@pytest.fixture(scope="session")
def secure_redis_database(secure_redis):
    """As redis_database, on secure_redis."""
    return services.RedisDatabases(secure_redis.url, secure_redis.databases).new
