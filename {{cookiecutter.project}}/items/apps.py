from django.apps import AppConfig


class ItemsConfig(AppConfig):
    """The example domain: items in categories, with tags."""

    name = "items"
