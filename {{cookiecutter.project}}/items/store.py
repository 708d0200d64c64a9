"""Every database operation of the items API.

Reads run on core.reads: values() querysets, on PostgreSQL over asyncio
connections with no thread; the number of queries does not grow with the number
of items (one for the items with their category, one for their tags).

Each write runs whole in one sync_to_async call, inside one transaction: Django's
transactions belong to a connection, and its connections to a thread, so every
statement of it uses the same connection and an exception anywhere rolls all of
it back. An item read by id is cached for ITEM_CACHE_SECONDS; every write of an
item here drops its cached copy once the transaction has committed.
"""

from collections.abc import AsyncIterator, Iterable

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.cache import cache
from django.db import connection, transaction
from django.db.models import Avg, Count, Sum

from core import idempotency, pages, reads
from items.changes import changed
from items.models import Category, Item, Tag
from items.schemas import CategoryQuery, ItemIn, ItemPatch, ItemQuery, Restock

# What an item's JSON is made of, as values() names it.
FIELDS = (
    "id",
    "name",
    "category__name",
    "price",
    "quantity",
    "created_at",
    "updated_at",
)
# Rows of the export fetched at a time: each batch is its own short read.
EXPORT_BATCH = 500


def _items():
    return Item.objects.values(*FIELDS)


def _tags_of(ids: Iterable[int]):
    return (
        Item.tags.through.objects.filter(item_id__in=list(ids))
        .values("item_id", "tag__name")
        .order_by()
    )


def item_data(row: dict, tags: list[str]) -> dict:
    """The JSON form of an item, from a row of _items() and its tag names."""
    return {
        "id": row["id"],
        "name": row["name"],
        "category": row["category__name"],
        "tags": sorted(tags),
        "price": str(row["price"]),
        "quantity": row["quantity"],
        "created_at": row["created_at"].isoformat(),
        "updated_at": row["updated_at"].isoformat(),
    }


def _with_tags(rows: list[dict], tag_rows: list[dict]) -> list[dict]:
    tags = {row["id"]: [] for row in rows}
    for link in tag_rows:
        tags[link["item_id"]].append(link["tag__name"])
    return [item_data(row, tags[row["id"]]) for row in rows]


async def _read(items) -> list[dict]:
    rows = await reads.fetch(items)
    if not rows:
        return []
    return _with_tags(rows, await reads.fetch(_tags_of(row["id"] for row in rows)))


def _read_sync(items) -> list[dict]:
    """_read, in a write's transaction: on its thread and connection."""
    rows = list(items)
    return _with_tags(rows, list(_tags_of(row["id"] for row in rows)))


async def list_items(query: ItemQuery) -> tuple[int | None, list[dict], str | None]:
    """A page of items by id, its total (offset pages only: after a cursor it is
    None) and the cursor of the next page (core.pages)."""
    items = _items()
    if query.category:
        items = items.filter(category__name=query.category)
    total = None if query.cursor is not None else await reads.count(items)
    window = pages.window(items, "id", query.limit, query.cursor, query.offset)
    return total, *pages.page(await _read(window), "id", query.limit)


def _cache_key(item_id: int) -> str:
    return f"item:{item_id}"


async def get_item(item_id: int) -> dict | None:
    data = await cache.aget(_cache_key(item_id))
    if data is None:
        found = await _read(_items().filter(pk=item_id))
        if not found:
            return None
        data = found[0]
        await cache.aset(_cache_key(item_id), data, settings.ITEM_CACHE_SECONDS)
    return data


def _tags(names: Iterable[str]) -> list[Tag]:
    return [Tag.objects.get_or_create(name=name)[0] for name in sorted(set(names))]


@sync_to_async
def create_item(data: ItemIn, key: idempotency.Key | None = None) -> dict:
    """With an Idempotency-Key, its answer commits with the item."""
    with transaction.atomic():
        category, _ = Category.objects.get_or_create(name=data.category)
        item = Item.objects.create(
            name=data.name, category=category, price=data.price, quantity=data.quantity
        )
        item.tags.set(_tags(data.tags))
        created = _read_sync(_items().filter(pk=item.pk))[0]
        if key:
            idempotency.remember(key, 201, created)
        changed(item.pk, "item.created")
        return created


async def create_category(name: str) -> Category:
    """Raises IntegrityError if the name is taken."""
    return await Category.objects.acreate(name=name)


async def list_categories(query: CategoryQuery) -> tuple[list[dict], str | None]:
    """A page of categories by name, and the cursor of the next (core.pages)."""
    categories = Category.objects.annotate(item_count=Count("items")).values(
        "id", "name", "item_count"
    )
    window = pages.window(categories, "name", query.limit, query.cursor)
    rows, cursor = pages.page(await reads.fetch(window), "name", query.limit)
    return [
        {"id": c["id"], "name": c["name"], "items": c["item_count"]} for c in rows
    ], cursor


@sync_to_async
def _update_item(item_id: int, patch: ItemPatch) -> dict | None:
    with transaction.atomic():
        # Locked until the transaction ends: concurrent updates of one item take
        # turns, so none of them mixes its fields with another's.
        item = Item.objects.select_for_update().filter(pk=item_id).first()
        if item is None:
            return None
        fields = patch.model_dump(exclude_unset=True, exclude={"tags"})
        for field, value in fields.items():
            setattr(item, field, value)
        item.save(update_fields=[*fields, "updated_at"])
        if patch.tags is not None:
            item.tags.set(_tags(patch.tags))
        changed(item_id, "item.updated")
        return _read_sync(_items().filter(pk=item_id))[0]


async def update_item(item_id: int, patch: ItemPatch) -> dict | None:
    data = await _update_item(item_id, patch)
    # After the commit, so that no read in between caches a half-updated item.
    await cache.adelete(_cache_key(item_id))
    return data


@sync_to_async
def _delete_item(item_id: int) -> bool:
    with transaction.atomic():
        # The item and its tag links.
        deleted, _ = Item.objects.filter(pk=item_id).delete()
        if deleted:
            changed(item_id, "item.deleted")
    return deleted > 0


async def delete_item(item_id: int) -> bool:
    deleted = await _delete_item(item_id)
    await cache.adelete(_cache_key(item_id))
    return deleted


@sync_to_async
def bulk_create_items(
    new_items: list[ItemIn], key: idempotency.Key | None = None
) -> int:
    """One INSERT for all items and one for all their tag links, all or nothing;
    with an Idempotency-Key, its answer commits with them."""
    with transaction.atomic():
        categories = {}
        for name in sorted({item.category for item in new_items}):
            categories[name], _ = Category.objects.get_or_create(name=name)
        created = [
            Item(
                name=item.name,
                category=categories[item.category],
                price=item.price,
                quantity=item.quantity,
            )
            for item in new_items
        ]
        if connection.features.can_return_rows_from_bulk_insert:
            Item.objects.bulk_create(created)
        else:
            # MySQL gives no ids back from a many-row INSERT (PostgreSQL, MariaDB
            # and SQLite do), and the tag links need them: one INSERT per item,
            # in the same transaction (at most BulkItemsIn's 100).
            for item in created:
                item.save(force_insert=True)
        tags = {tag.name: tag for tag in _tags(n for i in new_items for n in i.tags)}
        Item.tags.through.objects.bulk_create(
            Item.tags.through(item_id=item.pk, tag_id=tags[name].pk)
            for item, data in zip(created, new_items, strict=True)
            for name in set(data.tags)
        )
        if key:
            idempotency.remember(key, 201, {"created": len(created)})
        return len(created)


@sync_to_async
def _restock(wanted: dict[int, int]) -> list[int]:
    with transaction.atomic():
        found = Item.objects.select_for_update().in_bulk(list(wanted))
        missing = sorted(set(wanted) - set(found))
        if missing:
            # Nothing is written: an answer of 404 must not stand for a write
            # that half happened.
            return missing
        for item_id, item in found.items():
            item.quantity = wanted[item_id]
        Item.objects.bulk_update(found.values(), ["quantity"])
        return []


async def restock(changes: list[Restock]) -> list[int]:
    """Sets quantities in one transaction, all or none: returns the ids that do
    not exist, in which case nothing was written."""
    wanted = {change.id: change.quantity for change in changes}
    missing = await _restock(wanted)
    if not missing:
        await cache.adelete_many([_cache_key(item_id) for item_id in wanted])
    return missing


async def stats() -> dict:
    totals = await reads.aggregate(
        Item.objects.all(),
        items=Count("id"),
        units=Sum("quantity"),
        average_price=Avg("price"),
    )
    average = totals["average_price"]
    return {
        "items": totals["items"],
        "units": totals["units"] or 0,
        "average_price": None if average is None else str(round(average, 2)),
        "categories": await reads.count(Category.objects.all()),
    }


async def export_items(after: int | None = None) -> AsyncIterator[dict]:
    """Every item after the id `after`, by id, in batches of EXPORT_BATCH (keyset
    pages, core.pages): no connection is held while the client reads, and the
    memory used does not grow with the table."""
    while True:
        window = pages.window(_items(), "id", EXPORT_BATCH, after)
        batch, more = pages.page(await _read(window), "id", EXPORT_BATCH)
        for item in batch:
            yield item
        if more is None:
            return
        after = batch[-1]["id"]
