"""item_changed: sent with `asend` after every write of one item through the API.

Its receiver hands the change to the worker (items.tasks.record_change), so that
what the change sets off runs outside the request.
"""

from django.dispatch import Signal, receiver

from items.tasks import record_change

# Keyword arguments: item_id (int), event ("item.created", "item.updated", ...).
item_changed = Signal()


@receiver(item_changed)
async def record_change_in_the_background(sender, item_id: int, event: str, **kwargs):
    await record_change.enqueue(item_id, event)
