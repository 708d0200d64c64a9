"""deploy/ansible/ deploys a MySQL service (database=mysql) to a real systemd host.

The service runs on Granian, the one Ansible host of the suite that does.

One host, from containers.SYSTEMD_MYSQL_HOST: test_ansible.py's Debian 13 VM with
Debian's MariaDB in PostgreSQL's stead, on 127.0.0.1, standing in for a team's
MySQL or MariaDB server. The service runs Django Tasks, whose queue is that
database (django-tasks-db), so its worker reads MySQL too. The deploy builds
mysqlclient from its source on the host (the role installs what that takes) and
migrates under MySQL's named lock (manage.py migrate_locked: GET_LOCK).

The hosts, the inventory, the playbook runs and the checks are test_ansible.py's;
this module is an xdist group of its own, so it runs beside that one's deploys.
"""

import re

import pytest

from containers import SYSTEMD_MYSQL_HOST, podman
from test_ansible import (
    PROJECT,
    Host,
    a_task_runs,
    assert_second_run_changed_nothing,
    deploy_twice,
    deployment_to,
    smoke_passes,
)

pytestmark = pytest.mark.xdist_group("ansible-mysql")

IMAGE = "localhost/django-asgi-platform/debian-systemd-mysql:trixie"
# The database is the task queue: no Redis broker (Redis still carries the events).
# Granian: test_ansible.py's hosts run the default server.
OPTIONS = {"database": "mysql", "tasks": "django", "server": "granian"}


def create_mysql_database(host: Host, password: str) -> str:
    """The service's database and user in the host's MariaDB; returns its URL.

    The user is '…'@'127.0.0.1', which the URL's 127.0.0.1 reaches over TCP
    ('localhost' would be MariaDB's socket's). Root logs in by its socket.
    """
    name = PROJECT.replace("-", "_")
    podman(
        "exec",
        host.container,
        "mariadb",
        "--execute="
        f"CREATE DATABASE {name} CHARACTER SET utf8mb4;"
        f"CREATE USER '{name}'@'127.0.0.1' IDENTIFIED BY '{password}';"
        f"GRANT ALL PRIVILEGES ON {name}.* TO '{name}'@'127.0.0.1';",
    )
    return f"mysql://{name}:{password}@127.0.0.1:3306/{name}"


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """The MySQL service deployed to one host, then the same deploy again."""
    with deployment_to(
        tmp_path_factory.mktemp("ansible-mysql"),
        ("host1",),
        options=OPTIONS,
        image=IMAGE,
        recipe=SYSTEMD_MYSQL_HOST,
        database=create_mysql_database,
        # test_ansible.py checks the Prometheus targets; this deploy skips them.
        prometheus=False,
    ) as deployment:
        yield deployment, *deploy_twice(deployment)


def test_the_first_run_migrates_under_the_lock_and_a_second_changes_nothing(
    deployed,
):
    deployment, first, second = deployed
    assert_second_run_changed_nothing(deployment, first, second)
    # The first run built mysqlclient and applied the migrations (migrate_locked);
    # the second found none to apply.
    for task in (
        "Install what the MySQL driver is built with",
        "Apply the migrations",
    ):
        assert re.search(
            rf"^TASK \[service : {task}\] \**\nchanged: \[host1\]",
            deployment.runs[0],
            re.MULTILINE,
        ), deployment.runs[0]
    assert re.search(
        r"^TASK \[service : Apply the migrations\] \**\nskipping: \[host1\]",
        deployment.runs[1],
        re.MULTILINE,
    ), deployment.runs[1]
    host = deployment.hosts[0].testinfra
    env = host.file(f"/etc/{PROJECT}/env").content_string
    assert (
        f'DATABASE_URL="mysql://my_service:{deployment.database_password}'
        '@127.0.0.1:3306/my_service"'
    ) in env


def test_smoke_and_a_task_through_nginx(deployed):
    """bin/smoke through the host's Nginx (its writes, export and background task
    on MySQL), and a task recorded by the host's worker from MySQL's queue."""
    deployment, _, _ = deployed
    for host in deployment.hosts:
        smoke_passes(deployment, host)
        a_task_runs(deployment, host)


def test_a_recycled_granian_worker_hands_its_waiting_connections_on(deployed):
    """Granian's workers each listen with SO_REUSEPORT: the role sets
    net.ipv4.tcp_migrate_req, so the connections waiting on a recycled worker go to
    another one instead of being reset. Granian checks it as it starts two workers
    with a lifetime, and warns without it."""
    deployment, _, _ = deployed
    host = deployment.hosts[0].testinfra
    assert host.check_output("cat /proc/sys/net/ipv4/tcp_migrate_req") == "1"
    journal = host.check_output(f"journalctl --no-pager --unit '{PROJECT}@*'")
    assert "Spawning worker-2" in journal, journal
    assert "tcp_migrate_req" not in journal, journal
