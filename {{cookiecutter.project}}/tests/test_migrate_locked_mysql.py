"""manage.py migrate_locked on MySQL: while another session holds the
migration's named lock (GET_LOCK), migrate waits for it, and gives up with a
clear error after --lock-wait seconds. (The SQLite lock: test_migrate_locked.py.)"""

import MySQLdb
import pytest
from django.db import connections

from core.management.commands.migrate_locked import mysql_lock_name
from tests.test_migrate_locked import assert_migrate_waits_while_held


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(
    connections["default"].vendor != "mysql",
    reason="needs MySQL (DATABASE_URL); the SQLite lock: test_migrate_locked.py",
)
def test_a_second_migrate_waits_for_the_named_lock():
    connection = connections["default"]
    name = mysql_lock_name(connection)
    # Another deploy's migrate, as MySQL sees it: a session holding the lock.
    holder = MySQLdb.connect(**connection.get_connection_params())
    try:
        cursor = holder.cursor()
        cursor.execute("SELECT GET_LOCK(%s, 0)", [name])
        assert cursor.fetchone()[0] == 1
        assert_migrate_waits_while_held(
            lambda: cursor.execute("SELECT RELEASE_LOCK(%s)", [name])
        )
    finally:
        holder.close()
