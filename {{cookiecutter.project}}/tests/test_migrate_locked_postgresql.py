"""manage.py migrate_locked on PostgreSQL: while another session holds the
migration's advisory lock, migrate waits for it, and gives up with a clear error
after --lock-wait seconds. (The SQLite lock: test_migrate_locked.py.)"""

import psycopg
import pytest
from django.db import connections

from core.management.commands.migrate_locked import ADVISORY_LOCK_KEY
from tests.test_migrate_locked import assert_migrate_waits_while_held


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
        assert_migrate_waits_while_held(
            lambda: holder.execute("SELECT pg_advisory_unlock(%s)", [ADVISORY_LOCK_KEY])
        )
