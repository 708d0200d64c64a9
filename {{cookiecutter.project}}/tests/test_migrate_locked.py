"""manage.py migrate_locked (core/management/commands/migrate_locked.py): while one
migrate holds the database's migration lock, another waits for it, and gives up
with a clear error after --lock-wait seconds."""

import fcntl
import io
import threading
import time

import psycopg
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connections
from django.db.utils import ConnectionHandler

from core.management.commands.migrate_locked import ADVISORY_LOCK_KEY, migration_lock

WAITING = "Another migrate holds the migration lock: waiting for it."


def until(condition, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"not within {seconds} s"
        time.sleep(0.05)


class Migrate(threading.Thread):
    """migrate_locked in a thread of its own, with its own connection."""

    def __init__(self):
        super().__init__(daemon=True)
        self.stdout, self.stderr, self.error = io.StringIO(), io.StringIO(), None

    def run(self) -> None:
        try:
            call_command("migrate_locked", stdout=self.stdout, stderr=self.stderr)
        except Exception as error:  # reported by the test
            self.error = error
        finally:
            connections.close_all()


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(
    connections["default"].vendor != "postgresql",
    reason="needs PostgreSQL (DATABASE_URL); the SQLite lock is tested below",
)
def test_a_second_migrate_waits_for_the_advisory_lock():
    params = connections["default"].get_connection_params()
    for django_only in ("cursor_factory", "context", "prepare_threshold"):
        params.pop(django_only)
    # Another deploy's migrate, as PostgreSQL sees it: a session holding the lock.
    with psycopg.connect(**params, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", [ADVISORY_LOCK_KEY])
        with pytest.raises(CommandError, match="held the migration lock for 1 s"):
            call_command(
                "migrate_locked",
                lock_wait=1,
                stdout=io.StringIO(),
                stderr=io.StringIO(),
            )
        migrate = Migrate()
        migrate.start()
        until(lambda: WAITING in migrate.stderr.getvalue())
        time.sleep(1.5)
        assert migrate.is_alive()
        assert migrate.stdout.getvalue() == ""
        holder.execute("SELECT pg_advisory_unlock(%s)", [ADVISORY_LOCK_KEY])
        migrate.join(60)
    assert not migrate.is_alive()
    assert migrate.error is None
    assert "No migrations to apply." in migrate.stdout.getvalue()


def test_on_sqlite_the_lock_is_a_file_beside_the_database(tmp_path):
    database = ConnectionHandler(
        {
            "default": {
                "ENGINE": "django.db.backends.sqlite3",
                "NAME": str(tmp_path / "db.sqlite3"),
            }
        }
    )["default"]
    stderr, entered = io.StringIO(), threading.Event()

    def take() -> None:
        with migration_lock(database, 30, stderr):
            entered.set()

    # Another migrate on this host holds the file's lock.
    with (tmp_path / "db.sqlite3.migrate-lock").open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        thread = threading.Thread(target=take, daemon=True)
        thread.start()
        until(lambda: WAITING in stderr.getvalue())
        assert not entered.wait(1.5)
        fcntl.flock(held, fcntl.LOCK_UN)
        assert entered.wait(10)
    thread.join(10)
    assert not thread.is_alive()
