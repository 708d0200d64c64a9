from django.apps import AppConfig


class ItemsConfig(AppConfig):
    """The example domain: items in categories, with tags."""

    name = "items"
{%- if cookiecutter.tasks != "none" %}

    def ready(self) -> None:
        from items import signals  # noqa: F401  (connects the receivers)
{%- endif %}
