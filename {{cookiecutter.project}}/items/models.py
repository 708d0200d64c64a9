from django.db import models


class Category(models.Model):
    name = models.CharField(max_length=64, unique=True)

    def __str__(self) -> str:
        return self.name


class Tag(models.Model):
    name = models.CharField(max_length=32, unique=True)

    def __str__(self) -> str:
        return self.name


class Item(models.Model):
    name = models.CharField(max_length=120)
    category = models.ForeignKey(
        Category, on_delete=models.PROTECT, related_name="items"
    )
    tags = models.ManyToManyField(Tag, blank=True, related_name="items")
    price = models.DecimalField(max_digits=10, decimal_places=2)
    quantity = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["category", "name"])]

    def __str__(self) -> str:
        return self.name
{%- if cookiecutter.tasks != "none" %}


class Report(models.Model):
    """A stock report, built in the background (items.tasks.build_report)."""

    class Status(models.TextChoices):
        QUEUED = "queued"
        RETRYING = "retrying"
        DONE = "done"
        FAILED = "failed"

    # Empty: every category.
    category = models.CharField(max_length=64, blank=True)
    status = models.CharField(max_length=16, choices=Status, default=Status.QUEUED)
    attempts = models.PositiveIntegerField(default=0)
    result = models.JSONField(null=True, blank=True)
    error = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"report {self.pk} ({self.status})"


class ItemChange(models.Model):
    """A change to an item, recorded in the background (items.tasks.record_change)."""

    # Not a foreign key: the change outlives a deleted item.
    item_id = models.BigIntegerField(db_index=True)
    event = models.CharField(max_length=32)
    recorded_at = models.DateTimeField(auto_now_add=True)
    # One row per change, however often its task is delivered (a worker killed
    # mid-task, a relay that sends it again); null for changes recorded before.
    change_id = models.UUIDField(unique=True, null=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.event} of item {self.item_id}"
{%- endif %}
