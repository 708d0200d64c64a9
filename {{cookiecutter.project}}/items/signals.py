"""The receivers of items.changes.item_changed, connected by items.apps.

Each write of an item keeps its change's task (items.tasks.record_change) in the
write's own transaction (core.outbox), so that what the change sets off runs in
the worker, once the write has committed and even if the broker is down or this
process dies right after the commit.
"""

from django.dispatch import receiver

from core import outbox
from items.changes import item_changed
from items.tasks import record_change


@receiver(item_changed)
def record_change_in_the_background(
    sender, item_id: int, event: str, change_id: str, **kwargs
):
    outbox.keep(record_change, item_id, event, change_id)
