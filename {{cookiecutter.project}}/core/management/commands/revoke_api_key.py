"""`manage.py revoke_api_key NAME|PREFIX`: revokes every valid key of NAME, or
the one key of PREFIX (its `sk_<prefix>_` part). Requests with it get 401 at
once; a WebSocket opened with it is closed within WEBSOCKET_TOKEN_CHECK_SECONDS.

  manage.py revoke_api_key billing-sync     every key of billing-sync
  manage.py revoke_api_key 3f9c0a1b2d4e     one key
  manage.py revoke_api_key --list           the keys, valid or not, newest first
"""

from django.core.management.base import BaseCommand, CommandError
from django.db.models import Q
from django.utils import timezone

from core.models import ApiKey


class Command(BaseCommand):
    help = "Revokes API keys by holder name or prefix; --list shows them."

    def add_arguments(self, parser):
        parser.add_argument("key", nargs="?", help="a holder's name, or a key's prefix")
        parser.add_argument(
            "--list", action="store_true", dest="listing", help="list the keys"
        )

    def handle(self, *args, key=None, listing=False, **options):
        if listing:
            for row in ApiKey.objects.order_by("-created_at"):
                state = "revoked" if row.revoked_at else "valid"
                expires = row.expires_at.isoformat() if row.expires_at else "never"
                self.stdout.write(
                    f"{row.prefix}  {row.name}  {state}  created "
                    f"{row.created_at.isoformat()}  expires {expires}"
                )
            return
        if not key:
            raise CommandError("name a key holder or a key prefix, or pass --list")
        revoked = ApiKey.objects.filter(
            Q(name=key) | Q(prefix=key), revoked_at=None
        ).update(revoked_at=timezone.now())
        if not revoked:
            raise CommandError(f"no valid key of the name or prefix {key!r}")
        self.stdout.write(f"revoked {revoked} key{'s' if revoked > 1 else ''}")
