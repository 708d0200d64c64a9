"""Online backups of the SQLite database, and their restore.

`manage.py backup_database` and `manage.py restore_database` call these; the
chart's backup sidecar and the Ansible role's backup timer run the first.

A copy is made with SQLite's online backup API (Python's
sqlite3.Connection.backup), while the service keeps writing. Not `cp`: a copy
of a file being written is not consistent, and with WAL the latest commits are
in the -wal file, not yet in the database file, so a copy of that file alone
misses them or, taken mid-checkpoint, is torn. The backup API reads the
database as one transaction sees it, WAL included; under WAL readers never
block the writer, so the service does not wait for it. Not litestream, which
streams every change to object storage: it is not packaged for Debian and no
registry here ships it; a team with object storage would add it (or copy the
backups directory there).

Each copy is written under a temporary name, checked with PRAGMA
integrity_check, flushed to disk and renamed: a file with the final name is
always a whole, checked copy. The copy is a single file (journal mode DELETE).
"""

import logging
import os
import shutil
import sqlite3
import time
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

logger = logging.getLogger(__name__)

# Backups are named <database stem>-<UTC time>.sqlite3: names sort by age.
TIME_FORMAT = "%Y%m%dT%H%M%SZ"
TEMPORARY_SUFFIX = ".tmp"
# The table every migrated database of this service has.
MIGRATIONS_TABLE = "django_migrations"


class BackupError(Exception):
    """A backup or restore that did not happen; the message says why."""


def backup_name(database: Path, now: datetime) -> str:
    return f"{database.stem}-{now.astimezone(UTC).strftime(TIME_FORMAT)}.sqlite3"


def backups(database: Path, directory: Path) -> list[Path]:
    """The database's backups in the directory, oldest first."""
    return sorted(directory.glob(f"{database.stem}-*.sqlite3"))


def integrity_problems(connection: sqlite3.Connection) -> list[str]:
    """What PRAGMA integrity_check finds wrong (the first 5 problems); empty for a
    sound database."""
    rows = [row[0] for row in connection.execute("PRAGMA integrity_check(5)")]
    return [] if rows == ["ok"] else rows


def fsync(path: Path) -> None:
    """Flushes a file, or a directory's entries (a rename), to disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def backup(
    database: Path,
    directory: Path,
    keep: int,
    busy_timeout: float = 5.0,
    now: datetime | None = None,
) -> Path:
    """Copies the database into the directory, checks the copy, keeps the newest
    `keep` backups; returns the new one. Raises BackupError."""
    if keep < 1:
        raise BackupError("keep at least 1 backup")
    if not database.is_file():
        raise BackupError(f"no database at {database}")
    started = time.monotonic()
    final = directory / backup_name(database, now or datetime.now(UTC))
    temporary = final.with_name(f".{final.name}{TEMPORARY_SUFFIX}")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        temporary.unlink(missing_ok=True)
    except OSError as error:
        raise BackupError(f"cannot write to {directory}: {error}") from error
    try:
        copy_checked(database, temporary, busy_timeout)
        fsync(temporary)
        temporary.replace(final)
        fsync(directory)
    except (sqlite3.Error, OSError) as error:
        raise BackupError(f"could not copy {database}: {error}") from error
    finally:
        temporary.unlink(missing_ok=True)
    deleted = prune(database, directory, keep)
    logger.info(
        "database backed up",
        extra={
            "database": str(database),
            "backup": str(final),
            "bytes": final.stat().st_size,
            "seconds": round(time.monotonic() - started, 3),
            "deleted": [path.name for path in deleted],
        },
    )
    return final


def copy_checked(database: Path, copy_path: Path, busy_timeout: float) -> None:
    """Copies the database with the online backup API, then checks the copy."""
    # mode=rw: a missing database is an error, never a new empty one.
    source = sqlite3.connect(f"file:{database}?mode=rw", uri=True, timeout=busy_timeout)
    try:
        copy = sqlite3.connect(copy_path)
        try:
            # All pages in one step, as one read transaction sees them.
            source.backup(copy)
            copy.execute("PRAGMA journal_mode=DELETE")
            if problems := integrity_problems(copy):
                raise BackupError(f"the copy failed its integrity check: {problems}")
        finally:
            copy.close()
    finally:
        source.close()


def prune(database: Path, directory: Path, keep: int) -> list[Path]:
    """Deletes all but the newest `keep` backups, and the temporary files of runs
    that died mid-copy (each as large as the database); returns what it deleted."""
    deleted = backups(database, directory)[:-keep]
    deleted += directory.glob(f".{database.stem}-*.sqlite3{TEMPORARY_SUFFIX}")
    for path in deleted:
        path.unlink(missing_ok=True)
    return deleted


def check_restorable(path: Path, name: Path) -> None:
    """Raises BackupError unless the file (a copy of `name`) is a sound SQLite
    database of this service (it has the migrations table)."""
    try:
        connection = sqlite3.connect(f"file:{path}?mode=rw", uri=True)
        try:
            problems = integrity_problems(connection)
            has_migrations = connection.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                [MIGRATIONS_TABLE],
            ).fetchone()
        finally:
            connection.close()
    except sqlite3.Error as error:
        raise BackupError(f"{name} is not a sound SQLite database: {error}") from error
    if problems:
        raise BackupError(f"{name} failed its integrity check: {problems}")
    if not has_migrations:
        raise BackupError(
            f"{name} has no {MIGRATIONS_TABLE} table: not a database of this service"
        )


@contextmanager
def sole_connection(database: Path):
    """Holds an exclusive lock on the database, or raises BackupError when another
    process has it open: leaving WAL needs the only connection to the database
    (a running service keeps one), and BEGIN EXCLUSIVE waits for no writer."""
    if not database.exists():
        yield
        return
    connection = sqlite3.connect(f"file:{database}?mode=rw", uri=True, timeout=1)
    try:
        try:
            connection.execute("PRAGMA journal_mode=DELETE")
            connection.execute("BEGIN EXCLUSIVE")
        except sqlite3.OperationalError as error:
            raise BackupError(
                f"{database} is in use by another process ({error}): stop the "
                "service first"
            ) from error
        yield
    finally:
        connection.close()


def restore(source: Path, database: Path) -> None:
    """Replaces the database with a backup. The service must be stopped: a
    process that has the database open would go on writing to the replaced file.
    Raises BackupError, and leaves the database as it was, when the backup is not
    a sound database of this service or another process has the database open."""
    if not source.is_file():
        raise BackupError(f"no file at {source}")
    started = time.monotonic()
    # Copied beside the database first (same filesystem: the rename is atomic),
    # and the copy checked: the backup itself is never changed.
    temporary = database.with_name(f".{database.name}.restore{TEMPORARY_SUFFIX}")
    try:
        shutil.copyfile(source, temporary)
        check_restorable(temporary, source)
        fsync(temporary)
        with sole_connection(database):
            temporary.replace(database)
            for suffix in ("-wal", "-shm"):
                database.with_name(database.name + suffix).unlink(missing_ok=True)
            fsync(database.parent)
    except OSError as error:
        raise BackupError(f"could not restore {source}: {error}") from error
    finally:
        temporary.unlink(missing_ok=True)
    logger.info(
        "database restored",
        extra={
            "database": str(database),
            "backup": str(source),
            "seconds": round(time.monotonic() - started, 3),
        },
    )
