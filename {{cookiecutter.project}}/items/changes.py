"""What a write of one item through the API sets off: its event, for the event
stream and WebSocket clients (EVENTS_GROUP){% if cookiecutter.tasks != "none" %}, and the item_changed signal, whose
receiver hands the change to the worker (items/signals.py){% endif %}."""
{% if cookiecutter.tasks != "none" %}
import uuid
{% endif %}
from core import events, followups
{%- if cookiecutter.tasks != "none" %}
from items.models import Item
from items.signals import item_changed
{%- endif %}

# The channel-layer group that SSE streams and WebSocket consumers listen to.
EVENTS_GROUP = "items"


async def notify(event: str, item: dict) -> None:
    """`event` ("item.created", "item.updated", "item.deleted") for `item`, of
    which a deleted one's is its id only. Called once the write has committed:
    each step is a follow-up (core.followups), which cannot fail the request."""
    await followups.run("publish", events.publish(EVENTS_GROUP, event, item))
{%- if cookiecutter.tasks != "none" %}
    # The receiver never fails the request: core.outbox keeps what it cannot send.
    await item_changed.asend(
        Item, item_id=item["id"], event=event, change_id=str(uuid.uuid4())
    )
{%- endif %}
