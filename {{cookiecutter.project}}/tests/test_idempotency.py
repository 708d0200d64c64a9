"""Idempotency-Key on creates (core.idempotency): a retried POST gets the first
answer, never a second item; on SQLite and on PostgreSQL, concurrent retries too."""

import asyncio
import json

import pytest

from config.asgi import application
from core.models import IdempotentRequest
from core.openapi import document
from items.models import Item{% if cookiecutter.tasks != "none" %}, Report
from items.tasks import build_report{% endif %}
from tests.asgi import exchange

pytestmark = pytest.mark.django_db(transaction=True)


async def post(path: str, body: dict, key: str | None = "k-1"):
    """Status, headers (lowercase names) and JSON body of a POST with the key."""
    headers = [(b"content-type", b"application/json")]
    if key is not None:
        headers.append((b"idempotency-key", key.encode()))
    start, content = await exchange(
        application, "POST", path, json.dumps(body).encode(), headers
    )
    names = {name.decode().lower(): value.decode() for name, value in start["headers"]}
    return start["status"], names, json.loads(content)


async def test_a_retry_gets_the_first_answer_and_creates_nothing(item_payload):
    first = await post("/api/items", item_payload)
    again = await post("/api/items", item_payload)
    assert first[0] == again[0] == 201
    assert again[2] == first[2]
    assert again[1]["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first[1]
    # The replay says where the item is, as the first answer did.
    location = f"/api/items/{first[2]['id']}"
    assert first[1]["location"] == again[1]["location"] == location
    assert await Item.objects.acount() == 1


async def test_a_post_that_takes_no_key_refuses_one_before_it_writes(item_payload):
    """A restock does not keep answers by key: sent with one, it is refused rather
    than run as if a retry would get its first answer. Nginx sends a keyed POST
    that an instance reset to another instance (deploy/nginx/nginx.conf), which
    is safe only where the key is kept."""
    status, _, item = await post("/api/items", item_payload, key=None)
    assert status == 201
    restock = {"changes": [{"id": item["id"], "quantity": item["quantity"] + 5}]}
    status, _, body = await post("/api/items/restock", restock, key="k-restock")
    assert (status, body["error"]) == (400, "idempotency_key_not_supported")
    assert (await Item.objects.aget(pk=item["id"])).quantity == item["quantity"]
    status, _, _ = await post("/api/items/restock", restock, key=None)
    assert status == 200
    assert (await Item.objects.aget(pk=item["id"])).quantity == item["quantity"] + 5

{%- if cookiecutter.tasks != "none" %}


async def test_a_retried_report_is_the_first_one_and_its_task_is_sent_once(
    monkeypatch,
):
    sent = []

    async def accepted(task, *args):
        sent.append([task.name, *args])

    # On the adapter's Task class: some libraries' task objects are frozen.
    monkeypatch.setattr(type(build_report), "enqueue", accepted)
    first = await post("/api/reports", {"category": "tools"})
    again = await post("/api/reports", {"category": "tools"})
    assert first[0] == again[0] == 202
    assert again[2] == first[2]
    assert again[1]["idempotent-replayed"] == "true"
    location = f"/api/reports/{first[2]['id']}"
    assert first[1]["location"] == again[1]["location"] == location
    assert await Report.objects.acount() == 1
    assert sent == [[build_report.name, first[2]["id"]]]
{%- endif %}


async def test_the_same_key_with_another_body_is_refused(item_payload):
    assert (await post("/api/items", item_payload))[0] == 201
    status, _, body = await post("/api/items", {**item_payload, "name": "other"})
    assert (status, body["error"]) == (422, "idempotency_key_reused")
    assert await Item.objects.acount() == 1


async def test_keys_are_per_key_and_per_route(item_payload):
    assert (await post("/api/items", item_payload, "a"))[0] == 201
    assert (await post("/api/items", item_payload, "b"))[0] == 201
    bulk = {"items": [item_payload]}
    status, _, body = await post("/api/items/bulk", bulk, "a")
    assert (status, body) == (201, {"created": 1})
    assert (await post("/api/items/bulk", bulk, "a"))[2] == {"created": 1}
    assert await Item.objects.acount() == 3


async def test_concurrent_retries_create_once(item_payload):
    answers = await asyncio.gather(
        *(post("/api/items", item_payload) for _ in range(8))
    )
    assert {status for status, _, _ in answers} == {201}
    assert len({json.dumps(body) for _, _, body in answers}) == 1
    assert await Item.objects.acount() == 1
    assert await IdempotentRequest.objects.acount() == 1


async def test_a_failed_create_keeps_no_answer(item_payload):
    assert (await post("/api/items", {**item_payload, "price": "-1"}))[0] == 422
    assert (await post("/api/items", item_payload))[0] == 201
    assert await Item.objects.acount() == 1


@pytest.mark.parametrize("key", ["", "x" * 256, "clé", "tab\there"])
async def test_a_malformed_key_is_400(item_payload, key):
    status, _, body = await post("/api/items", item_payload, key)
    assert (status, body["error"]) == (400, "invalid_idempotency_key")
    assert not await Item.objects.aexists()


async def test_an_expired_answer_is_forgotten(item_payload, settings):
    assert (await post("/api/items", item_payload))[0] == 201
    settings.IDEMPOTENCY_KEY_HOURS = 0
    status, headers, _ = await post("/api/items", item_payload)
    assert status == 201
    assert "idempotent-replayed" not in headers
    assert await Item.objects.acount() == 2
    assert await IdempotentRequest.objects.acount() == 1


def test_the_document_declares_the_key_on_the_creates_only():
    declared = {
        (path, method)
        for path, operations in document()["paths"].items()
        for method, operation in operations.items()
        if any(p["name"] == "Idempotency-Key" for p in operation.get("parameters", []))
    }
    assert declared == {
        ("/api/items", "post"),
        ("/api/items/bulk", "post"),
{%- if cookiecutter.tasks != "none" %}
        ("/api/reports", "post"),
{%- endif %}
    }


def test_the_document_declares_where_a_create_answers_its_resource_is():
    declared = {
        (path, method, status)
        for path, operations in document()["paths"].items()
        for method, operation in operations.items()
        for status, response in operation["responses"].items()
        if "Location" in response.get("headers", {})
    }
    assert declared == {
        ("/api/items", "post", "201"),
{%- if cookiecutter.tasks != "none" %}
        ("/api/reports", "post", "202"),
{%- endif %}
    }
