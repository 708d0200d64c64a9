"""`manage.py backup_database DIR`: a consistent copy of the SQLite database, taken
while the service keeps writing (core.backups says how, and why not cp or
litestream).

  manage.py backup_database /var/backups/my-service            one backup, then exit
  manage.py backup_database DIR --keep 7                       the newest 7 are kept
  manage.py backup_database DIR --every 3600                   one an hour until SIGTERM

Each backup is DIR/<database>-<UTC time>.sqlite3, checked with PRAGMA
integrity_check, and logged as a JSON line ("database backed up", or "database
backup failed" with the reason). A single backup that fails exits non-zero: the
exit status is what a systemd timer (the Ansible role's) reports. With --every
(the chart's backup sidecar), a failure is logged and the next run tries again;
SIGTERM ends the wait at once, and a backup under way first.

SQLite only: a PostgreSQL database is backed up with pg_dump (or the provider's
snapshots and point-in-time recovery), which this command does not replace.
"""

import logging
import signal
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from django.db import connections

from core.backups import BackupError, backup

logger = logging.getLogger("core.backups")

STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def sqlite_database(alias: str) -> Path:
    """The database file of the connection, or CommandError for another vendor."""
    connection = connections[alias]
    if connection.vendor != "sqlite":
        raise CommandError(
            f"The database is {connection.vendor}, not SQLite: back it up with "
            "pg_dump (or your provider's snapshots), not with this command."
        )
    if connection.is_in_memory_db():
        raise CommandError("The database is in memory: there is no file to copy.")
    return Path(connection.settings_dict["NAME"])


class Command(BaseCommand):
    help = "Copies the SQLite database into DIR while the service runs; keeps N."

    def add_arguments(self, parser):
        parser.add_argument("directory", type=Path, help="where the backups go")
        parser.add_argument(
            "--keep",
            type=int,
            default=7,
            help="backups kept, the newest; older ones are deleted (default 7)",
        )
        parser.add_argument(
            "--every",
            type=float,
            metavar="SECONDS",
            help="back up again every SECONDS until SIGTERM, instead of once",
        )
        parser.add_argument("--database", default="default")

    def handle(self, *args, directory, keep, every, database, **options):
        if keep < 1:
            raise CommandError("--keep must be at least 1")
        if every is not None and every <= 0:
            raise CommandError("--every must be a positive number of seconds")
        path = sqlite_database(database)
        timeout = connections[database].settings_dict["OPTIONS"].get("timeout", 5.0)
        if every is None:
            try:
                backup(path, directory, keep, busy_timeout=timeout)
            except BackupError as error:
                logger.error("database backup failed", extra={"error": str(error)})
                raise CommandError(f"database backup failed: {error}") from error
            return
        # Held until sigtimedwait takes them: a SIGTERM during a backup lets it
        # finish, one during the wait ends the wait at once.
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        while True:
            try:
                backup(path, directory, keep, busy_timeout=timeout)
            except BackupError as error:
                logger.error("database backup failed", extra={"error": str(error)})
            if signal.sigtimedwait(STOP_SIGNALS, every) is not None:
                return
