"""deploy/ansible/ deploys an SQLite service (database=sqlite) to a real systemd
host, the backup timer's unit backs its database up there, and the service
README's restore, run as written, brings the database back to a backup.

One host (the role refuses SQLite on more: its database is the host's file), from
test_ansible.py's Debian 13 image, its PostgreSQL unused. The backup unit runs
the live release's `manage.py backup_database` as the service user in the
instances' sandbox; its timer fires hourly, so the test starts the unit as the
timer would.

The hosts, the inventory and the playbook runs are test_ansible.py's; this module
is an xdist group of its own, so it runs beside that one's deploys.
"""

import base64
import json
import re
import shlex
from pathlib import Path

import pytest

from test_ansible import INSTANCE_PORTS, PROJECT, Host, deployment_to, exposure

pytestmark = pytest.mark.xdist_group("ansible-sqlite")

OPTIONS = {"database": "sqlite", "tasks": "none"}
DATABASE = f"/var/lib/{PROJECT}/db.sqlite3"
BACKUPS = f"/var/backups/{PROJECT}"
UNIT = f"{PROJECT}-backup"
# The README's restore on a VM: the commands after "On a VM:", and the backup they
# name as an example.
README_RESTORE = re.compile(r"On a VM:\n\n```sh\n(.*?)```", re.DOTALL)
EXAMPLE_BACKUP = re.compile(rf"{BACKUPS}/db-\d{{8}}T\d{{6}}Z\.sqlite3")


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


def test_the_backup_unit_is_sandboxed_to_an_exposure_of_at_most_2(deployed):
    """As test_ansible.py's units: the backup's unit has the instances' sandbox
    and writes its backups' directory too."""
    rating, report = exposure(deployed.hosts[0], f"{UNIT}.service")
    assert rating <= 2.0, report


def backed_up(host) -> str:
    """A new backup, made as the timer makes one: its path."""
    before = set(host.run(f"ls {BACKUPS}").stdout.split())
    started = host.run(f"systemctl start {UNIT}.service")
    assert started.rc == 0, host.run(f"journalctl -u {UNIT} --no-pager").stdout
    [backup] = set(host.run(f"ls {BACKUPS}").stdout.split()) - before
    return f"{BACKUPS}/{backup}"


def readme_restore(project: Path, backup: str) -> str:
    """The README's restore commands for a VM, naming `backup`; as root already,
    without their sudo."""
    [commands] = README_RESTORE.findall((project / "README.md").read_text())
    assert EXAMPLE_BACKUP.search(commands), commands
    commands = EXAMPLE_BACKUP.sub(backup, commands)
    return re.sub(r"^sudo ", "", commands, flags=re.MULTILINE)


def test_the_readmes_restore_takes_the_database_back_to_a_backup(deployed):
    host = deployed.hosts[0].testinfra
    backup = backed_up(host)
    # A write after the backup, which the restore takes back.
    created = host.run(
        f"/opt/{PROJECT}/bin/manage shell -c "
        "\"from items.models import Category; Category.objects.create(name='later')\""
    )
    assert created.rc == 0, created.stderr
    written = "SELECT COUNT(*) FROM items_category WHERE name = 'later'"
    assert sqlite(host, DATABASE, written) == [[1]]

    script = readme_restore(deployed.project, backup)
    encoded = base64.b64encode(script.encode()).decode()
    restored = host.run(f"echo {encoded} | base64 -d | sh -eux")
    assert restored.rc == 0, f"{script}\n{restored.stdout}\n{restored.stderr}"
    assert f"restored from {backup}" in restored.stdout

    assert sqlite(host, DATABASE, written) == [[0]]
    assert sqlite(host, DATABASE, "PRAGMA integrity_check") == [["ok"]]
    assert host.file(DATABASE).user == PROJECT
    # The instances it stopped are ready again, on the restored database.
    for port in INSTANCE_PORTS:
        assert ready(host, port), host.run(f"journalctl -u {PROJECT}@* -n 50").stdout
    assert host.service(f"{UNIT}.timer").is_running


def ready(host, port: int) -> bool:
    """Whether the instance on `port` answers /readyz with 200 within 60 s, asked
    from inside the host (instances listen on its 127.0.0.1 only)."""
    script = (
        "import sys, time, urllib.request\n"
        "deadline = time.monotonic() + 60\n"
        "while time.monotonic() < deadline:\n"
        "    try:\n"
        "        urllib.request.urlopen(sys.argv[1], timeout=5)\n"
        "        sys.exit(0)\n"
        "    except OSError:\n"
        "        time.sleep(0.5)\n"
        "sys.exit(1)\n"
    )
    url = f"http://127.0.0.1:{port}/readyz"
    return host.run(f"python3 -c {shlex.quote(script)} {url}").rc == 0
