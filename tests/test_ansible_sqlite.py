"""deploy/ansible/ deploys an SQLite service (database=sqlite) to a real systemd
host, and the backup timer's unit backs its database up there.

One host (the role refuses SQLite on more: its database is the host's file), from
test_ansible.py's Debian 13 image, its PostgreSQL unused. The backup unit runs
the live release's `manage.py backup_database` as the service user in the
instances' sandbox; its timer fires hourly, so the test starts the unit as the
timer would.

The hosts, the inventory and the playbook runs are test_ansible.py's; this module
is an xdist group of its own, so it runs beside that one's deploys.
"""

import json

import pytest

from test_ansible import PROJECT, Host, deployment_to

pytestmark = pytest.mark.xdist_group("ansible-sqlite")

OPTIONS = {"database": "sqlite", "tasks": "none"}
DATABASE = f"/var/lib/{PROJECT}/db.sqlite3"
BACKUPS = f"/var/backups/{PROJECT}"
UNIT = f"{PROJECT}-backup"


def sqlite_database(host: Host, password: str) -> str:
    """The role's own default: the database is a file of the host's."""
    return f"sqlite:///{DATABASE}"


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    with deployment_to(
        tmp_path_factory.mktemp("ansible-sqlite"),
        ("host1",),
        options=OPTIONS,
        database=sqlite_database,
        # test_ansible.py checks the Prometheus targets; this deploy skips them.
        prometheus=False,
    ) as deployment:
        deployment.deploy()
        yield deployment


def sqlite(host, path: str, query: str) -> list:
    """The rows of `query` on the database file at `path`, read on the host."""
    script = (
        "import json, sqlite3, sys; "
        "connection = sqlite3.connect(f'file:{sys.argv[1]}?mode=ro', uri=True); "
        "print(json.dumps(connection.execute(sys.argv[2]).fetchall()))"
    )
    result = host.run(f"python3 -c {script!r} {path} {query!r}")
    assert result.rc == 0, result.stderr
    return json.loads(result.stdout)


def test_the_backup_timer_is_on_and_its_unit_makes_a_checked_copy(deployed):
    host = deployed.hosts[0].testinfra
    timer = host.service(f"{UNIT}.timer")
    assert timer.is_enabled
    assert timer.is_running
    assert host.file(BACKUPS).user == PROJECT
    # The timer may have fired on the hour meanwhile.
    before = set(host.run(f"ls {BACKUPS}").stdout.split())

    started = host.run(f"systemctl start {UNIT}.service")
    assert started.rc == 0, host.run(f"journalctl -u {UNIT} --no-pager").stdout
    backups = sorted(set(host.run(f"ls {BACKUPS}").stdout.split()) - before)
    assert len(backups) == 1, backups
    backup = f"{BACKUPS}/{backups[0]}"
    assert host.file(backup).user == PROJECT
    assert sqlite(host, backup, "PRAGMA integrity_check") == [["ok"]]
    # The copy holds what the live database holds: its migrations, applied.
    query = "SELECT app, name FROM django_migrations ORDER BY id"
    assert sqlite(host, backup, query) == sqlite(host, DATABASE, query)
    assert ["items", "0001_initial"] in sqlite(host, backup, query)
    # The unit said what it did, in one JSON line of the journal.
    journal = host.run(f"journalctl -u {UNIT} --no-pager -o cat").stdout
    lines = [json.loads(line) for line in journal.splitlines() if line.startswith("{")]
    said = [line for line in lines if line["message"] == "database backed up"]
    assert (DATABASE, backup) in [(line["database"], line["backup"]) for line in said]
