"""Every database operation of the items API, with the async ORM.

Reads use select_related/prefetch_related so that the number of queries does
not grow with the number of items. The one multi-statement write that must be
all-or-nothing runs in a transaction in a single thread (see create_item).
An item read by id is cached for ITEM_CACHE_SECONDS; every write of an item
here drops its cached copy.
"""

from collections.abc import AsyncIterator

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.db.models import Avg, Count, Sum

from items.models import Category, Item, Tag
from items.schemas import ItemIn, ItemPatch, Restock


def item_data(item: Item) -> dict:
    """The JSON form of an item; needs category and tags loaded."""
    return {
        "id": item.id,
        "name": item.name,
        "category": item.category.name,
        "tags": sorted(tag.name for tag in item.tags.all()),
        "price": str(item.price),
        "quantity": item.quantity,
        "created_at": item.created_at.isoformat(),
        "updated_at": item.updated_at.isoformat(),
    }


def _with_relations():
    return Item.objects.select_related("category").prefetch_related("tags")


async def list_items(category: str | None, limit: int, offset: int) -> tuple[int, list]:
    items = _with_relations()
    if category:
        items = items.filter(category__name=category)
    total = await items.acount()
    page = [item_data(item) async for item in items[offset : offset + limit]]
    return total, page


def _cache_key(item_id: int) -> str:
    return f"item:{item_id}"


async def get_item(item_id: int) -> dict | None:
    data = await cache.aget(_cache_key(item_id))
    if data is None:
        try:
            data = item_data(await _with_relations().aget(pk=item_id))
        except Item.DoesNotExist:
            return None
        await cache.aset(_cache_key(item_id), data, settings.ITEM_CACHE_SECONDS)
    return data


def _tags(names: list[str]) -> list[Tag]:
    return [Tag.objects.get_or_create(name=name)[0] for name in sorted(set(names))]


# Django's transactions are per connection, and connections per thread: the whole
# transaction runs inside one sync_to_async call, so every statement of it uses
# the same connection. An exception anywhere rolls all of it back.
@sync_to_async
def create_item(data: ItemIn) -> dict:
    with transaction.atomic():
        category, _ = Category.objects.get_or_create(name=data.category)
        item = Item.objects.create(
            name=data.name, category=category, price=data.price, quantity=data.quantity
        )
        item.tags.set(_tags(data.tags))
        return item_data(_with_relations().get(pk=item.pk))


async def create_category(name: str) -> Category:
    """Raises IntegrityError if the name is taken."""
    return await Category.objects.acreate(name=name)


async def list_categories() -> list[dict]:
    categories = Category.objects.annotate(item_count=Count("items")).order_by("name")
    return [
        {"id": c.id, "name": c.name, "items": c.item_count} async for c in categories
    ]


async def update_item(item_id: int, patch: ItemPatch) -> dict | None:
    try:
        item = await _with_relations().aget(pk=item_id)
    except Item.DoesNotExist:
        return None
    fields = patch.model_dump(exclude_unset=True, exclude={"tags"})
    for field, value in fields.items():
        setattr(item, field, value)
    await item.asave(update_fields=[*fields, "updated_at"])
    if patch.tags is not None:
        tags = [
            (await Tag.objects.aget_or_create(name=name))[0] for name in set(patch.tags)
        ]
        await item.tags.aset(tags)
        item = await _with_relations().aget(pk=item_id)
    # After the last write, so that no read in between caches a half-updated item.
    await cache.adelete(_cache_key(item_id))
    return item_data(item)


async def delete_item(item_id: int) -> bool:
    deleted, _ = await Item.objects.filter(pk=item_id).adelete()
    await cache.adelete(_cache_key(item_id))
    return deleted > 0


async def bulk_create_items(new_items: list[ItemIn]) -> int:
    """One INSERT for all items and one for all their tag links.

    Not one transaction: categories and tags are created idempotently first, and
    each INSERT is atomic by itself, so a failure leaves no half-written item.
    """
    categories = {}
    for name in sorted({item.category for item in new_items}):
        categories[name], _ = await Category.objects.aget_or_create(name=name)
    created = await Item.objects.abulk_create(
        [
            Item(
                name=item.name,
                category=categories[item.category],
                price=item.price,
                quantity=item.quantity,
            )
            for item in new_items
        ]
    )
    tag_names = sorted({name for item in new_items for name in item.tags})
    tags = {}
    for name in tag_names:
        tags[name], _ = await Tag.objects.aget_or_create(name=name)
    links = [
        Item.tags.through(item_id=item.pk, tag_id=tags[name].pk)
        for item, data in zip(created, new_items, strict=True)
        for name in set(data.tags)
    ]
    await Item.tags.through.objects.abulk_create(links)
    return len(created)


async def restock(changes: list[Restock]) -> list[int]:
    """Sets quantities in one UPDATE; returns the ids that do not exist."""
    wanted = {change.id: change.quantity for change in changes}
    found = await Item.objects.ain_bulk(list(wanted))
    for item_id, item in found.items():
        item.quantity = wanted[item_id]
    await Item.objects.abulk_update(found.values(), ["quantity"])
    await cache.adelete_many([_cache_key(item_id) for item_id in found])
    return sorted(set(wanted) - set(found))


async def stats() -> dict:
    totals = await Item.objects.aaggregate(
        items=Count("id"), units=Sum("quantity"), average_price=Avg("price")
    )
    average = totals["average_price"]
    return {
        "items": totals["items"],
        "units": totals["units"] or 0,
        "average_price": None if average is None else str(round(average, 2)),
        "categories": await Category.objects.acount(),
    }


async def export_items() -> AsyncIterator[dict]:
    """Every item, streamed in chunks rather than loaded at once."""
    async for item in _with_relations().aiterator(chunk_size=500):
        yield item_data(item)
