"""`manage.py restore_database FILE`: replaces the SQLite database with a backup
(from `manage.py backup_database`). Stop the service first: a process that has
the database open would go on writing to the file being replaced. The command
refuses when it sees one (another connection keeps the database in WAL mode, or
holds a lock, for a second), but it cannot see a stopped-between-requests
service whose connections are all closed.

The backup is copied beside the database, checked there (PRAGMA
integrity_check, and the django_migrations table of a database of this
service), flushed to disk and renamed over the database, whose stale -wal and
-shm files are removed. A file that is not a sound SQLite database of this
service is refused, and the database left as it was. Then run `manage.py
migrate` if the backup is older than the code, and start the service.
"""

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from django.db import connections

from core.backups import BackupError, restore
from core.management.commands.backup_database import sqlite_database


class Command(BaseCommand):
    help = "Replaces the SQLite database with a backup. Stop the service first."

    def add_arguments(self, parser):
        parser.add_argument("file", type=Path, help="the backup to restore")
        parser.add_argument("--database", default="default")

    def handle(self, *args, file, database, **options):
        path = sqlite_database(database)
        # This process's own connection would count as a running service's.
        connections[database].close()
        try:
            restore(file, path)
        except BackupError as error:
            raise CommandError(f"nothing restored: {error}") from error
        self.stdout.write(f"{path} restored from {file}: start the service.")
