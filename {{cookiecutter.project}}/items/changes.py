"""What a write of one item through the API sets off.

- item_changed, a signal sent inside the write's transaction (items.store), so
  that what its receivers write commits or rolls back with the item{% if cookiecutter.tasks != "none" %}: the
  receiver in items/signals.py keeps the change's task for the worker there
  (core.outbox){% endif %};
- once the write has committed, its event, for the event stream and WebSocket
  clients (EVENTS_GROUP): notify().
"""

import uuid

from django.dispatch import Signal

from core import events, followups
from items.models import Item

# The channel-layer group that SSE streams and WebSocket consumers listen to.
EVENTS_GROUP = "items"

# Keyword arguments: item_id (int), event ("item.created", "item.updated",
# "item.deleted"), change_id (str: a UUID, one per change, whatever the
# deliveries of what it sets off). Receivers are synchronous: they run inside the
# write's transaction, and an exception in one rolls the write back.
item_changed = Signal()


def changed(item_id: int, event: str) -> None:
    """Sends item_changed for a write of the item; call inside its transaction."""
    item_changed.send(Item, item_id=item_id, event=event, change_id=str(uuid.uuid4()))


async def notify(event: str, item: dict) -> None:
    """`event` for `item`, of which a deleted one's is its id only. Called once
    the write has committed: a follow-up (core.followups), which cannot fail the
    request."""
    await followups.run("publish", events.publish(EVENTS_GROUP, event, item))
