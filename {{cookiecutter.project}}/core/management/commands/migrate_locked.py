"""`manage.py migrate_locked`: Django's migrate, one at a time per database.

Deploys call it instead of migrate (Ansible's migrate step, Helm's migration Job):
two deploys that overlap, or a retried Helm upgrade whose first Job still runs,
would otherwise apply the same migration twice at once. It takes every option of
migrate, and --lock-wait.

A management command rather than a wrapper in a deploy's script: PostgreSQL's
advisory lock and MySQL's named lock (GET_LOCK) belong to a session and are held
only while that session lives, so the process that runs migrate must hold them;
and both deploys (the VM's bin/manage, the Job's container) run manage.py and
nothing else. On SQLite, whose database is one host's file, the lock is an
flock(2) on a file beside it.
"""

import fcntl
import time
from contextlib import contextmanager
from pathlib import Path

from django.core.management.base import CommandError
from django.core.management.commands import migrate
from django.db import connections

# Any fixed 64-bit number: what every migrate_locked of a database waits on. It
# spells "migrate" in ASCII, to be recognisable in pg_locks.
ADVISORY_LOCK_KEY = int.from_bytes(b"migrate", "big")


def mysql_lock_name(connection) -> str:
    """Named locks are the server's, not a database's: the name says which (a
    name holds at most 64 characters)."""
    return f"{connection.settings_dict['NAME']}:migrate"[-64:]


@contextmanager
def migration_lock(connection, wait: float, stderr):
    """Holds the database's migration lock, waiting up to `wait` seconds for it.

    Polled once a second rather than blocking in pg_advisory_lock or GET_LOCK:
    a blocked statement would be stopped at the service's statement time limit."""
    if connection.vendor == "postgresql":

        def take() -> bool:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_try_advisory_lock(%s)", [ADVISORY_LOCK_KEY])
                return cursor.fetchone()[0]

        def release() -> None:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [ADVISORY_LOCK_KEY])

    elif connection.vendor == "mysql":
        name = mysql_lock_name(connection)

        def take() -> bool:
            with connection.cursor() as cursor:
                cursor.execute("SELECT GET_LOCK(%s, 0)", [name])
                return cursor.fetchone()[0] == 1

        def release() -> None:
            with connection.cursor() as cursor:
                cursor.execute("SELECT RELEASE_LOCK(%s)", [name])

    elif connection.is_in_memory_db():
        # No other process can open it.
        yield
        return
    else:
        path = Path(f"{connection.settings_dict['NAME']}.migrate-lock")
        lock_file = path.open("a")

        def take() -> bool:
            try:
                fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            return True

        def release() -> None:
            lock_file.close()

    deadline = time.monotonic() + wait
    if not take():
        stderr.write("Another migrate holds the migration lock: waiting for it.")
        while not take():
            if time.monotonic() >= deadline:
                raise CommandError(
                    f"Another migrate held the migration lock for {wait:g} s: "
                    "let it finish, or find it (pg_locks, MySQL's "
                    "IS_USED_LOCK, or the lock file's holder) and stop it, "
                    "then deploy again."
                )
            time.sleep(1)
    try:
        yield
    finally:
        release()


class Command(migrate.Command):
    help = (
        "Runs migrate while holding the database's migration lock, so that two "
        "deploys never migrate at once."
    )

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument(
            "--lock-wait",
            type=float,
            default=600,
            help="Seconds to wait for another migrate to finish (default 600).",
        )

    def handle(self, *args, **options):
        connection = connections[options["database"]]
        with migration_lock(connection, options.pop("lock_wait"), self.stderr):
            super().handle(*args, **options)
