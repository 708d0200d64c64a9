"""manage.py migrate_locked on PostgreSQL: while another session holds the
migration's advisory lock, migrate waits for it, and gives up with a clear error
after --lock-wait seconds. (The SQLite lock: test_migrate_locked.py.)"""

import io
import time

import psycopg
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connections

from core.management.commands.migrate_locked import ADVISORY_LOCK_KEY
from tests.test_migrate_locked import WAITING, Migrate, until


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(
    connections["default"].vendor != "postgresql",
    reason="needs PostgreSQL (DATABASE_URL); the SQLite lock: test_migrate_locked.py",
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
