"""item_changed: sent with `asend` after every write of one item through the API
has committed.

Its receiver hands the change to the worker (items.tasks.record_change), so that
what the change sets off runs outside the request; core.outbox keeps the task for
the relay if the broker does not take it.
"""

from django.dispatch import Signal, receiver

from core import outbox
from items.tasks import record_change

# Keyword arguments: item_id (int), event ("item.created", "item.updated", ...),
# change_id (str: a UUID, one per change, whatever its deliveries).
item_changed = Signal()


@receiver(item_changed)
async def record_change_in_the_background(
    sender, item_id: int, event: str, change_id: str, **kwargs
):
    await outbox.enqueue(record_change, item_id, event, change_id)
