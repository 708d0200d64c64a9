from django.apps import AppConfig


class CoreConfig(AppConfig):
    """Service plumbing: request context, JSON API helpers, health, events, metrics,
    checks."""

    name = "core"

    def ready(self) -> None:
        from django.conf import settings
        from django.db.backends.signals import connection_created

        from core import (
            checks,  # noqa: F401  (registers the system checks)
            errors,
        )
        from core.database import check_pooled_connections, instrument

        connection_created.connect(instrument)
        if settings.DATABASE_VENDOR == "mysql":
            from core.database_server import limit_statements

            connection_created.connect(limit_statements)
        check_pooled_connections()
        errors.setup()
