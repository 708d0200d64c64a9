"""Backups of the SQLite database (core/backups.py, manage.py backup_database and
restore_database): a backup taken while another connection keeps writing is a
sound copy of one moment, old backups go, a restore brings back exactly the
backup's rows, and what is not a sound database of this service is refused with
the live database untouched.

The databases are files of each test's own, in WAL mode as the service runs
them; the commands run as the sidecar and the timer run them, in a process of
their own. A service that chose PostgreSQL has none of this (pg_dump is the
tool there).
"""

import os
import signal
import sqlite3
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connections

from core.backups import BackupError, backup, backups, restore
from tests.test_migrate_locked import until

NOW = datetime(2026, 12, 3, 7, 0, tzinfo=UTC)


def make_database(path: Path, rows: int = 0) -> Path:
    """A database as the service keeps it: WAL, a migrations table, and a table
    of numbered rows."""
    connection = sqlite3.connect(path)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute(
        "CREATE TABLE django_migrations (id INTEGER PRIMARY KEY, app TEXT, "
        "name TEXT, applied TEXT)"
    )
    connection.execute("CREATE TABLE rows (n INTEGER PRIMARY KEY, padding TEXT)")
    insert(connection, range(1, rows + 1))
    connection.close()
    return path


def insert(connection: sqlite3.Connection, numbers) -> None:
    with connection:
        connection.executemany(
            "INSERT INTO rows VALUES (?, ?)", ((n, "x" * 200) for n in numbers)
        )


def numbers(path: Path) -> list[int]:
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [n for (n,) in connection.execute("SELECT n FROM rows ORDER BY n")]
    finally:
        connection.close()


def integrity(path: Path) -> list[tuple]:
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return connection.execute("PRAGMA integrity_check").fetchall()
    finally:
        connection.close()


class Writer(threading.Thread):
    """The service writing: one row per transaction until stopped. Its commits
    stay in the -wal file (no automatic checkpoint), as the latest ones always
    do between checkpoints."""

    def __init__(self, path: Path):
        super().__init__(daemon=True)
        self.path, self.stop, self.committed = path, threading.Event(), 0

    def run(self) -> None:
        connection = sqlite3.connect(self.path, timeout=5)
        connection.execute("PRAGMA wal_autocheckpoint=0")
        while not self.stop.is_set():
            insert(connection, [self.committed + 1])
            self.committed += 1
        connection.close()


def test_a_backup_taken_while_rows_are_written_is_a_sound_copy_of_one_moment(
    tmp_path,
):
    database = make_database(tmp_path / "db.sqlite3")
    writer = Writer(database)
    writer.start()
    try:
        until(lambda: writer.committed >= 500)
        before = writer.committed
        copy = backup(database, tmp_path / "backups", keep=7)
        after = writer.committed
        until(lambda: writer.committed > after)
    finally:
        writer.stop.set()
        writer.join(10)
    assert integrity(copy) == [("ok",)]
    copied = numbers(copy)
    # Every row committed before it began, none that was not committed by its end,
    # and no gap: the rows of one moment.
    assert before <= len(copied) <= after
    assert copied == list(range(1, len(copied) + 1))
    assert copy.name == "db-" + copy.name[3:19] + ".sqlite3"
    # One self-contained file, and nothing else left in the directory.
    assert sorted(p.name for p in copy.parent.iterdir()) == [copy.name]
    connection = sqlite3.connect(copy)
    assert connection.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    connection.close()


def test_only_the_newest_backups_are_kept(tmp_path):
    database = make_database(tmp_path / "db.sqlite3", rows=3)
    directory = tmp_path / "backups"
    directory.mkdir()
    # What a run that died mid-copy left behind.
    (directory / ".db-20261201T000000Z.sqlite3.tmp").write_bytes(b"half a copy")
    made = [
        backup(database, directory, keep=3, now=NOW + timedelta(hours=hour))
        for hour in range(5)
    ]
    assert backups(database, directory) == made[2:]
    assert sorted(p.name for p in directory.iterdir()) == [p.name for p in made[2:]]
    assert made[-1].name == "db-20261203T110000Z.sqlite3"


def test_a_restore_brings_back_exactly_the_rows_of_the_backup(tmp_path):
    database = make_database(tmp_path / "db.sqlite3", rows=10)
    copy = backup(database, tmp_path / "backups", keep=7)
    connection = sqlite3.connect(database)
    insert(connection, range(11, 21))
    with connection:
        connection.execute("DELETE FROM rows WHERE n <= 5")
    connection.close()
    assert numbers(database) == list(range(6, 21))

    restore(copy, database)
    assert numbers(database) == list(range(1, 11))
    assert integrity(database) == [("ok",)]
    # The backup is untouched, and no stale WAL of the replaced file is left.
    assert numbers(copy) == list(range(1, 11))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backups", "db.sqlite3"]


def not_sqlite(directory: Path, database: Path) -> Path:
    path = directory / "notes.sqlite3"
    path.write_text("not a database")
    return path


def corrupt(directory: Path, database: Path) -> Path:
    """A backup with a page in the middle overwritten."""
    data = bytearray(backup(database, directory, keep=1).read_bytes())
    middle = len(data) // 4096 // 2 * 4096
    data[middle : middle + 4096] = b"\xff" * 4096
    path = directory / "corrupt.sqlite3"
    path.write_bytes(data)
    return path


def not_this_services(directory: Path, database: Path) -> Path:
    path = directory / "other.sqlite3"
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE t (x)")
    connection.close()
    return path


@pytest.mark.parametrize(
    ("make_file", "error"),
    [
        (not_sqlite, "notes.sqlite3 is not a sound SQLite database: file is not a"),
        (corrupt, "corrupt.sqlite3 is not a sound SQLite database: database disk"),
        (
            not_this_services,
            "has no django_migrations table: not a database of this service",
        ),
    ],
    ids=["not-sqlite", "corrupt", "not-this-service"],
)
def test_a_file_that_is_not_a_sound_database_of_the_service_is_refused(
    make_file, error, tmp_path
):
    database = make_database(tmp_path / "db.sqlite3", rows=300)
    files = tmp_path / "files"
    files.mkdir()
    candidate = make_file(files, database)
    before = database.read_bytes()
    with pytest.raises(BackupError, match=error):
        restore(candidate, database)
    assert database.read_bytes() == before
    # No temporary copy left beside it.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db.sqlite3", "files"]
    assert numbers(database) == list(range(1, 301))


def test_a_restore_is_refused_while_the_service_has_the_database_open(tmp_path):
    database = make_database(tmp_path / "db.sqlite3", rows=10)
    copy = backup(database, tmp_path / "backups", keep=7)
    service = sqlite3.connect(database)
    insert(service, [11])
    with pytest.raises(BackupError, match=r"in use by another process .*: stop the"):
        restore(copy, database)
    service.close()
    assert numbers(database) == list(range(1, 12))
    restore(copy, database)
    assert numbers(database) == list(range(1, 11))


def manage(database: Path, *args: str, **kwargs) -> subprocess.Popen:
    """manage.py in a process of its own, on the given SQLite database."""
    environment = os.environ | {
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DJANGO_READ_DOT_ENV": "false",
        "DJANGO_SECRET_KEY": settings.SECRET_KEY,
        "DATABASE_URL": f"sqlite:///{database}",
    }
    return subprocess.Popen(  # noqa: S603  (this interpreter, our own code)
        [sys.executable, "manage.py", *args],
        cwd=settings.BASE_DIR,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def test_the_commands_back_up_and_restore_and_exit_non_zero_on_failure(tmp_path):
    database = make_database(tmp_path / "db.sqlite3", rows=10)
    directory = tmp_path / "backups"
    process = manage(database, "backup_database", str(directory), "--keep", "2")
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    (copy,) = backups(database, directory)
    assert '"message": "database backed up"' in out, out
    assert f'"backup": "{copy}"' in out, out

    # A directory that cannot be made: a failed backup's log line and exit status.
    process = manage(database, "backup_database", str(database / "backups"))
    out, err = process.communicate(timeout=60)
    assert process.returncode == 1
    assert '"message": "database backup failed"' in out, out
    assert "database backup failed: cannot write to" in err, err

    connection = sqlite3.connect(database)
    insert(connection, [11])
    connection.close()
    process = manage(database, "restore_database", str(copy))
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert f"{database} restored from {copy}: start the service." in out
    assert numbers(database) == list(range(1, 11))

    process = manage(database, "restore_database", str(tmp_path))
    out, err = process.communicate(timeout=60)
    assert process.returncode == 1
    assert f"nothing restored: no file at {tmp_path}" in err, err


def test_every_backs_up_until_sigterm_ends_its_wait(tmp_path):
    """The chart's sidecar: a backup at once, then one every --every seconds;
    SIGTERM during the hour's wait ends the process at once, with status 0."""
    database = make_database(tmp_path / "db.sqlite3", rows=10)
    directory = tmp_path / "backups"
    process = manage(database, "backup_database", str(directory), "--every", "3600")
    try:
        until(lambda: backups(database, directory), seconds=60)
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0, err
    assert out.count('"message": "database backed up"') == 1, out
    assert numbers(backups(database, directory)[0]) == list(range(1, 11))


@pytest.mark.django_db
def test_the_command_copies_the_services_own_database(tmp_path):
    call_command("backup_database", tmp_path, keep=1)
    (copy,) = tmp_path.iterdir()
    connection = sqlite3.connect(copy)
    applied = connection.execute("SELECT count(*) FROM django_migrations").fetchone()
    connection.close()
    assert applied[0] > 0


def test_another_database_is_refused_and_pg_dump_named(tmp_path, monkeypatch):
    """DATABASE_URL may point elsewhere than the SQLite file this service chose."""
    monkeypatch.setattr(connections["default"], "vendor", "postgresql")
    for command, argument in (("backup_database", tmp_path), ("restore_database", "x")):
        with pytest.raises(CommandError, match="not SQLite: back it up with pg_dump"):
            call_command(command, argument)
