"""The items store behind the API: constant query counts, bulk paths, reads in
batches, and writes that are all or nothing."""

import asyncio
import json

import pytest
from django.db.models import Count, Sum
from django.test import AsyncClient
from prometheus_client import REGISTRY

from config.asgi import application
from core import reads
from items import store
from items.models import Category, Item, Tag
from items.schemas import ItemIn, ItemPatch
from tests.asgi import request

pytestmark = pytest.mark.django_db(transaction=True)

JSON = "application/json"


def new_items(count: int) -> list[ItemIn]:
    return [
        ItemIn(
            name=f"item {n}",
            category=f"c{n % 3}",
            price="1.00",
            tags=[f"t{n % 4}", "all"],
        )
        for n in range(count)
    ]


def queries_made() -> float:
    """Statements run so far, by either path (core.database's wrapper for Django's
    connections, core.reads for the asyncio pool): both time each one."""
    return sum(
        sample.value
        for metric in REGISTRY.collect()
        if metric.name == "django_db_query_duration_seconds"
        for sample in metric.samples
        if sample.name.endswith("_count")
    )


async def test_listing_takes_the_same_queries_for_2_or_40_items():
    # A public read: without a token, no query for the key.
    async_client = AsyncClient()
    await store.bulk_create_items(new_items(2))
    before = queries_made()
    response = await async_client.get("/api/items?limit=100")
    assert len(response.json()["items"]) == 2
    assert queries_made() - before == 3  # count, items joined with category, tags

    await store.bulk_create_items(new_items(38))
    before = queries_made()
    response = await async_client.get("/api/items?limit=100")
    assert queries_made() - before == 3
    items = response.json()["items"]
    assert len(items) == 40
    assert all(item["tags"] and item["category"] for item in items)


async def test_bulk_create_and_restock(async_client):
    response = await async_client.post(
        "/api/items/bulk",
        {"items": [item.model_dump(mode="json") for item in new_items(6)]},
        content_type=JSON,
    )
    assert response.json() == {"created": 6}
    assert await Item.objects.acount() == 6
    assert await Category.objects.acount() == 3
    assert await Tag.objects.acount() == 5
    assert await Item.tags.through.objects.acount() == 12

    ids = [pk async for pk in Item.objects.values_list("pk", flat=True)]
    changes = [{"id": pk, "quantity": 100 + pk} for pk in ids[:4]]
    response = await async_client.post(
        "/api/items/restock", {"changes": changes}, content_type=JSON
    )
    assert response.json() == {"updated": 4}
    quantities = {pk: q async for pk, q in Item.objects.values_list("pk", "quantity")}
    assert all(quantities[c["id"]] == c["quantity"] for c in changes)
    assert all(quantities[pk] == 0 for pk in ids[4:])


async def test_restock_of_missing_items_is_404_and_changes_nothing_else(async_client):
    await store.bulk_create_items(new_items(1))
    item = await Item.objects.aget()
    response = await async_client.post(
        "/api/items/restock",
        {"changes": [{"id": item.pk, "quantity": 5}, {"id": 999999, "quantity": 5}]},
        content_type=JSON,
    )
    assert response.status_code == 404
    assert "999999" in response.json()["message"]
    # All or nothing: the item that exists kept its quantity.
    assert (await Item.objects.aget()).quantity == item.quantity


async def test_stats_aggregate(async_client):
    await store.bulk_create_items(
        [
            ItemIn(name="a", category="x", price="1.00", quantity=2),
            ItemIn(name="b", category="y", price="2.00", quantity=3),
        ]
    )
    response = await async_client.get("/api/items/stats")
    assert response.json() == {
        "items": 2,
        "units": 5,
        "average_price": "1.50",
        "categories": 2,
    }


async def test_stats_of_nothing(async_client):
    response = await async_client.get("/api/items/stats")
    assert response.json() == {
        "items": 0,
        "units": 0,
        "average_price": None,
        "categories": 0,
    }


async def test_export_streams_every_item_as_ndjson(async_client, monkeypatch):
    monkeypatch.setattr(store, "EXPORT_BATCH", 3)  # 7 items: batches of 3, 3, 1
    await store.bulk_create_items(new_items(7))
    response = await async_client.get("/api/items/export")
    assert response["Content-Type"] == "application/x-ndjson"
    lines = b"".join([chunk async for chunk in response.streaming_content]).splitlines()
    assert [json.loads(line)["name"] for line in lines] == [
        f"item {n}" for n in range(7)
    ]


async def export_lines(client, path: str) -> list[dict]:
    response = await client.get(path)
    assert response.status_code == 200
    assert response["X-Accel-Buffering"] == "no"
    content = b"".join([chunk async for chunk in response.streaming_content])
    return [json.loads(line) for line in content.splitlines()]


async def test_an_export_past_its_row_bound_ends_with_the_rest(
    async_client, monkeypatch, settings
):
    """Each request sends EXPORT_MAX_ROWS items, then the URL of the rest;
    following it reads each item once."""
    monkeypatch.setattr(store, "EXPORT_BATCH", 2)
    settings.EXPORT_MAX_ROWS = 3
    await store.bulk_create_items(new_items(7))
    path, requests, names = "/api/items/export", 0, []
    while path and requests < 3:
        lines = await export_lines(async_client, path)
        requests += 1
        path = lines[-1].get("next")
        names += [line["name"] for line in lines if "next" not in line]
        assert len(lines) <= 4
    assert path is None
    assert requests == 3
    assert names == [f"item {n}" for n in range(7)]


async def test_an_export_past_its_time_limit_ends_with_the_rest(async_client, settings):
    """Past EXPORT_MAX_SECONDS (none here), a request sends what it has begun,
    one item, and the URL that goes on after it."""
    settings.EXPORT_MAX_SECONDS = 0
    await store.bulk_create_items(new_items(2))
    first, rest = await export_lines(async_client, "/api/items/export")
    assert first["name"] == "item 0"
    second = await export_lines(async_client, rest["next"])
    assert [line["name"] for line in second] == ["item 1"]


async def test_an_export_with_a_bad_cursor_is_400(async_client):
    response = await async_client.get("/api/items/export?cursor=e30")
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_query"


async def test_failed_create_rolls_back_the_whole_transaction(monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(Item.objects, "create", fail)
    with pytest.raises(RuntimeError):
        await store.create_item(ItemIn(name="a", category="new", price="1"))
    # The category was created inside the transaction before the failure.
    assert not await Category.objects.filter(name="new").aexists()


async def test_failed_update_changes_nothing(monkeypatch, item_payload):
    created = await store.create_item(ItemIn(**item_payload))

    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(store, "_tags", fail)  # after the item's fields are saved
    with pytest.raises(RuntimeError):
        await store.update_item(
            created["id"], ItemPatch(name="renamed", quantity=9, tags=["red"])
        )
    assert await store.get_item(created["id"]) == created


async def test_failed_bulk_import_writes_no_item(monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    # The tag links are the last INSERT: items and categories are in by then.
    monkeypatch.setattr(Item.tags.through.objects, "bulk_create", fail)
    with pytest.raises(RuntimeError):
        await store.bulk_create_items(new_items(3))
    assert await Item.objects.acount() == 0
    assert await Category.objects.acount() == 0


async def test_concurrent_updates_of_one_item_never_mix(item_payload):
    # Each request in a thread of its own, as the server runs them: the updates
    # race for real, and each must be whole (its row lock, or SQLite's write lock).
    item = await store.create_item(ItemIn(**item_payload))
    path = f"/api/items/{item['id']}"

    async def update(n: int):
        return await request(
            application, "PATCH", path, {"quantity": n, "tags": [f"t{n}", "x"]}
        )

    answers = await asyncio.gather(*(update(n) for n in range(8)))
    assert {status for status, _, _ in answers} == {200}
    for _, _, body in answers:
        assert body["tags"] == sorted([f"t{body['quantity']}", "x"])
    final = await store.get_item(item["id"])
    assert final["tags"] == sorted([f"t{final['quantity']}", "x"])


async def test_delete_removes_only_that_item(async_client):
    await store.bulk_create_items(new_items(2))
    first, second = [pk async for pk in Item.objects.values_list("pk", flat=True)]
    assert (await async_client.delete(f"/api/items/{first}")).status_code == 204
    assert [pk async for pk in Item.objects.values_list("pk", flat=True)] == [second]
    assert (await async_client.delete(f"/api/items/{first}")).status_code == 404


async def test_reads_of_nothing_run_no_query():
    before = queries_made()
    assert await reads.fetch(Item.objects.filter(pk__in=[]).values("id")) == []
    assert await reads.count(Item.objects.none()) == 0
    totals = await reads.aggregate(Item.objects.none(), n=Count("id"), s=Sum("price"))
    assert totals == {"n": 0, "s": None}
    assert queries_made() == before
