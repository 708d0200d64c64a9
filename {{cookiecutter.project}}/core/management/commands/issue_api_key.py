"""`manage.py issue_api_key NAME`: a new API key for NAME (a service, a team, a
deploy's smoke test), printed once on stdout and kept only as a hash (core.auth).

  manage.py issue_api_key billing-sync                   never expires
  manage.py issue_api_key billing-sync --expires-in-days 90

Send it as `Authorization: Bearer <key>`. A name may hold several keys at once,
so that a new key can be rolled out before the old one is revoked
(`manage.py revoke_api_key`).
"""

import datetime

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from core.auth import new_api_key
from core.models import ApiKey


class Command(BaseCommand):
    help = "Issues an API key; prints it once."

    def add_arguments(self, parser):
        parser.add_argument("name", help="who holds the key")
        parser.add_argument("--expires-in-days", type=int, metavar="DAYS")

    def handle(self, *args, name, expires_in_days=None, **options):
        name = name.strip()
        if not name or len(name) > ApiKey._meta.get_field("name").max_length:
            raise CommandError("the name must be 1 to 100 characters")
        if expires_in_days is not None and expires_in_days < 1:
            raise CommandError("--expires-in-days must be at least 1")
        prefix, digest, token = new_api_key()
        ApiKey.objects.create(
            name=name,
            prefix=prefix,
            digest=digest,
            expires_at=None
            if expires_in_days is None
            else timezone.now() + datetime.timedelta(days=expires_in_days),
        )
        self.stdout.write(token)
