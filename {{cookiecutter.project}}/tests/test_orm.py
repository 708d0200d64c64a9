"""The async ORM behind the API: constant query counts, bulk paths, transactions."""

import json

import pytest
from asgiref.sync import async_to_sync
from django.test import AsyncClient

from items import store
from items.models import Category, Item, Tag
from items.schemas import ItemIn

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


def test_listing_takes_the_same_queries_for_2_or_40_items(django_assert_num_queries):
    # A sync test driving the async view: the ORM's thread-sensitive calls then
    # come back to this thread, where the query counter listens.
    client = AsyncClient()
    async_to_sync(store.bulk_create_items)(new_items(2))
    with django_assert_num_queries(3):  # count, items joined with category, tags
        response = async_to_sync(client.get)("/api/items?limit=100")
    assert len(response.json()["items"]) == 2

    async_to_sync(store.bulk_create_items)(new_items(38))
    with django_assert_num_queries(3):
        response = async_to_sync(client.get)("/api/items?limit=100")
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


async def test_export_streams_every_item_as_ndjson(async_client):
    await store.bulk_create_items(new_items(7))
    response = await async_client.get("/api/items/export")
    assert response["Content-Type"] == "application/x-ndjson"
    lines = b"".join([chunk async for chunk in response.streaming_content]).splitlines()
    assert [json.loads(line)["name"] for line in lines] == [
        f"item {n}" for n in range(7)
    ]


async def test_failed_create_rolls_back_the_whole_transaction(monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(Item.objects, "create", fail)
    with pytest.raises(RuntimeError):
        await store.create_item(ItemIn(name="a", category="new", price="1"))
    # The category was created inside the transaction before the failure.
    assert not await Category.objects.filter(name="new").aexists()


async def test_delete_removes_only_that_item(async_client):
    await store.bulk_create_items(new_items(2))
    first, second = [pk async for pk in Item.objects.values_list("pk", flat=True)]
    assert (await async_client.delete(f"/api/items/{first}")).status_code == 204
    assert [pk async for pk in Item.objects.values_list("pk", flat=True)] == [second]
    assert (await async_client.delete(f"/api/items/{first}")).status_code == 404
