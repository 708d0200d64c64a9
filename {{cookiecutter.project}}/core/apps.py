from django.apps import AppConfig


class CoreConfig(AppConfig):
    """Service plumbing: request context, JSON API helpers, health, events, checks."""

    name = "core"

    def ready(self) -> None:
        from core import checks  # noqa: F401  (registers the system checks)
