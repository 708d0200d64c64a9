"""`manage.py dead_letters`: lists the dead-lettered tasks, retries or drops them.

A task is dead-lettered when TASK_MAX_DELIVERIES deliveries of one attempt found
their worker dead before it finished (core.tasks): it is kept as a
core.TaskDelivery row, counted by django_task_dead_letters, until someone looks.
The same for every queue library: none of the five counts such deliveries, so
core.tasks does, and this command is their one interface.

  manage.py dead_letters                   lists them, oldest first
  manage.py dead_letters --retry JOB ...   sends them again (--retry all: every one)
  manage.py dead_letters --drop JOB ...    forgets them (--drop all: every one)

A retried task goes through core.outbox, in the transaction that removes its
dead letter: the task worker's relay sends it within OUTBOX_RELAY_SECONDS, even
if the broker is down now. It starts afresh: new job, first attempt.
"""

import json

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from core.models import PendingTask, TaskDelivery

ALL = "all"


class Command(BaseCommand):
    help = "Lists the dead-lettered tasks; retries or drops them."

    def add_arguments(self, parser):
        action = parser.add_mutually_exclusive_group()
        action.add_argument(
            "--retry", nargs="+", metavar="JOB", help=f"job ids, or {ALL!r}"
        )
        action.add_argument(
            "--drop", nargs="+", metavar="JOB", help=f"job ids, or {ALL!r}"
        )

    def handle(self, *args, retry=None, drop=None, **options):
        dead = TaskDelivery.objects.exclude(dead_lettered_at=None)
        if retry or drop:
            jobs = retry or drop
            chosen = dead if jobs == [ALL] else dead.filter(job__in=jobs)
            with transaction.atomic():
                rows = list(chosen.select_for_update())
                unknown = set(jobs) - {row.job for row in rows} - {ALL}
                if unknown:
                    listed = ", ".join(sorted(unknown))
                    raise CommandError(f"no dead-lettered task has the job id {listed}")
                if retry:
                    PendingTask.objects.bulk_create(
                        PendingTask(task=row.task, args=row.args) for row in rows
                    )
                TaskDelivery.objects.filter(pk__in=[row.pk for row in rows]).delete()
            verb = "queued for the worker's relay" if retry else "dropped"
            self.stdout.write(f"{len(rows)} dead-lettered task(s) {verb}")
            return
        for row in dead:
            self.stdout.write(
                f"{row.job}  {row.task}{json.dumps(row.args)}  "
                f"deliveries={row.deliveries}  last worker={row.worker}  "
                f"dead-lettered {row.dead_lettered_at.isoformat()}"
            )
