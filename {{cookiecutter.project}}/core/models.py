"""The service's own bookkeeping tables (not the API's data)."""

from django.db import models


class IdempotentRequest(models.Model):
    """The answer a create gave to an Idempotency-Key (core.idempotency), kept
    so that a client's retry of it gets the same answer instead of a second
    resource. Written in the create's own transaction: the key and what it
    created commit together or not at all."""

    route = models.CharField(max_length=64)
    key = models.CharField(max_length=255)
    fingerprint = models.CharField(max_length=64)  # SHA-256 of the request body
    status = models.PositiveSmallIntegerField()
    body = models.TextField()  # the answer's JSON, as sent: replayed byte for byte
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["route", "key"], name="one_answer_per_key")
        ]

    def __str__(self) -> str:
        return f"{self.route} {self.key}"


class ApiKey(models.Model):
    """A service's API key (core.auth): only its prefix, which finds the row, and
    the SHA-256 of its secret are kept. The secret is 32 random bytes, so a plain
    hash is as strong as a slow one would be. Issued and revoked with
    `manage.py issue_api_key` and `manage.py revoke_api_key`."""

    name = models.CharField(max_length=100, db_index=True)  # who holds it
    prefix = models.CharField(max_length=16, unique=True)
    digest = models.CharField(max_length=64)  # SHA-256 of the secret, hex
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix})"
{%- if cookiecutter.tasks != "none" %}


class PendingTask(models.Model):
    """A task that a committed write called for and the broker did not take at
    once (core.outbox): the task worker's relay sends it until the broker does."""

    task = models.CharField(max_length=100)  # its name: core.queueing.Task.name
    args = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    # A relay that took it sends it before then; after, another relay may.
    claimed_until = models.DateTimeField(null=True, blank=True)
    # The W3C trace context of the request that kept it (core.tracing), which the
    # relay sends it within; null when tracing is off.
    trace = models.JSONField(null=True, blank=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.task}{tuple(self.args)}"


class TaskDelivery(models.Model):
    """A task attempt that a worker started and has not finished (core.tasks):
    a delivery whose worker died leaves its row, and the next delivery of the
    same job counts one more. Past TASK_MAX_DELIVERIES the job is not run again
    but dead-lettered: its row stays, with dead_lettered_at, until
    `manage.py dead_letters` retries or drops it."""

    job = models.CharField(max_length=64, unique=True)  # the library's job id
    task = models.CharField(max_length=100)  # its name: core.queueing.Task.name
    args = models.JSONField()
    deliveries = models.PositiveIntegerField(default=1)
    started_at = models.DateTimeField()  # of the latest delivery
    worker = models.CharField(max_length=100)  # its process: "host:pid"
    dead_lettered_at = models.DateTimeField(null=True, blank=True, db_index=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.task}{tuple(self.args)} [{self.job}]"
{%- endif %}
