"""The items JSON API: round trips, and a 4xx with a JSON body for every bad input."""

import json

import pytest

from core import pages
from core.api import FIELD_NAME_CHARS, MAX_FIELD_ERRORS
from items.schemas import MAX_OFFSET

pytestmark = pytest.mark.django_db(transaction=True)

JSON = "application/json"


async def create(client, payload):
    response = await client.post("/api/items", payload, content_type=JSON)
    assert response.status_code == 201, response.content
    return response.json()


async def test_create_read_update_delete(async_client, item_payload):
    item = await create(async_client, item_payload)
    assert item["name"] == "Widget"
    assert item["category"] == "tools"
    assert item["tags"] == ["blue", "small"]
    assert item["price"] == "12.50"

    response = await async_client.get(f"/api/items/{item['id']}")
    assert response.status_code == 200
    assert response.json() == item

    response = await async_client.patch(
        f"/api/items/{item['id']}", {"quantity": 9, "tags": ["red"]}, content_type=JSON
    )
    assert response.status_code == 200
    assert response.json()["quantity"] == 9
    assert response.json()["tags"] == ["red"]

    response = await async_client.delete(f"/api/items/{item['id']}")
    assert response.status_code == 204
    response = await async_client.get(f"/api/items/{item['id']}")
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


async def test_list_filters_and_pages(async_client, item_payload):
    for index in range(3):
        await create(async_client, {**item_payload, "name": f"tool {index}"})
    await create(async_client, {**item_payload, "name": "apple", "category": "food"})

    body = (await async_client.get("/api/items?category=tools&limit=2&offset=1")).json()
    assert body["total"] == 3
    assert [item["name"] for item in body["items"]] == ["tool 1", "tool 2"]


async def test_a_walk_by_cursor_reads_each_item_once_with_one_count(
    async_client, item_payload
):
    """The first page is counted; the pages after it follow `next` (a keyset
    cursor, which keeps the filter and limit), are not counted, and a row deleted
    or created meanwhile neither repeats an item nor skips one."""
    made = [
        await create(async_client, {**item_payload, "name": f"t{n}"}) for n in range(5)
    ]
    await create(async_client, {**item_payload, "name": "apple", "category": "food"})

    body = (await async_client.get("/api/items?category=tools&limit=2")).json()
    assert body["total"] == 5
    seen = [item["name"] for item in body["items"]]
    await async_client.delete(f"/api/items/{made[0]['id']}")
    await create(async_client, {**item_payload, "name": "t5"})
    for _ in range(2):  # 6 items, 2 a page: a cursor that moves on ends here
        assert "category=tools" in body["next"]
        assert "limit=2" in body["next"]
        body = (await async_client.get(body["next"])).json()
        assert body["total"] is None
        seen += [item["name"] for item in body["items"]]
    assert body["next"] is None
    assert seen == ["t0", "t1", "t2", "t3", "t4", "t5"]


async def test_an_offset_page_gives_the_cursor_past_it(async_client, item_payload):
    for n in range(4):
        await create(async_client, {**item_payload, "name": f"t{n}"})
    body = (await async_client.get("/api/items?limit=2&offset=1")).json()
    assert "offset" not in body["next"]
    after = (await async_client.get(body["next"])).json()
    assert [item["name"] for item in after["items"]] == ["t3"]
    assert after["next"] is None


@pytest.mark.parametrize(
    "query",
    [
        f"offset={MAX_OFFSET + 1}",
        "offset=1000000",
    ],
)
async def test_an_offset_past_the_bound_is_400_naming_it(async_client, query):
    response = await async_client.get(f"/api/items?{query}")
    assert response.status_code == 400
    answer = response.json()
    assert answer["error"] == "invalid_query"
    assert [f["field"] for f in answer["fields"]] == ["offset"]
    assert str(MAX_OFFSET) in answer["fields"][0]["message"]


@pytest.mark.parametrize(
    "path",
    [
        f"/api/items?offset=2&cursor={pages.encode(1)}",
        "/api/items?cursor=not%20a%20cursor",
        "/api/items?cursor=!!",
        f"/api/items?cursor={pages.encode('tools')}",
        f"/api/items?cursor={pages.encode(2**63)}",
        f"/api/items?cursor={pages.encode('1')}",
        f"/api/items?cursor={'A' * (pages.MAX_CURSOR_CHARS + 1)}",
        f"/api/categories?cursor={pages.encode(1)}",
        f"/api/categories?cursor={pages.encode('a' + chr(0))}",
        "/api/categories?cursor=e30",  # {}
        "/api/categories?limit=101",
    ],
)
async def test_a_bad_cursor_or_page_is_400(async_client, path):
    response = await async_client.get(path)
    assert response.status_code == 400, response.content
    assert response.json()["error"] == "invalid_query"


async def test_categories_are_paged_by_name(async_client):
    names = [f"c{n:02}" for n in range(7)]
    for name in reversed(names):
        response = await async_client.post(
            "/api/categories", {"name": name}, content_type=JSON
        )
        assert response.status_code == 201
    body = (await async_client.get("/api/categories?limit=3")).json()
    seen = [category["name"] for category in body["categories"]]
    for _ in range(2):  # 7 categories, 3 a page
        body = (await async_client.get(body["next"])).json()
        assert len(body["categories"]) <= 3
        seen += [category["name"] for category in body["categories"]]
    assert body["next"] is None
    assert seen == names
    everything = (await async_client.get("/api/categories")).json()
    assert len(everything["categories"]) == 7
    assert everything["next"] is None


async def test_categories_conflict_is_409(async_client):
    response = await async_client.post(
        "/api/categories", {"name": "food"}, content_type=JSON
    )
    assert response.status_code == 201
    response = await async_client.post(
        "/api/categories", {"name": "food"}, content_type=JSON
    )
    assert response.status_code == 409
    assert response.json()["error"] == "conflict"
    listed = (await async_client.get("/api/categories")).json()["categories"]
    assert listed == [{"id": listed[0]["id"], "name": "food", "items": 0}]


@pytest.mark.parametrize(
    ("body", "content_type", "status", "error"),
    [
        (b'{"name": "x",', JSON, 400, "malformed_json"),
        (b" ", JSON, 400, "malformed_json"),
        (b"\xff\xfe", JSON, 400, "malformed_json"),
        (b'{"name": 5, "category": "a", "price": "1"}', JSON, 422, "validation_failed"),
        (
            b'{"name": "a", "category": "a", "price": "x"}',
            JSON,
            422,
            "validation_failed",
        ),
        (
            b'{"name": "a", "category": "a", "price": "1", "quantity": "2"}',
            JSON,
            422,
            "validation_failed",
        ),
        (
            b'{"name": "a", "category": "a", "price": "-1"}',
            JSON,
            422,
            "validation_failed",
        ),
        (
            b'{"name": "a", "category": "a", "price": "1", "admin": true}',
            JSON,
            422,
            "validation_failed",
        ),
        (b"[1, 2]", JSON, 422, "validation_failed"),
        (b'{"name": "a"}', "text/plain", 415, "unsupported_media_type"),
    ],
)
async def test_bad_bodies_are_client_errors(
    async_client, body, content_type, status, error
):
    response = await async_client.post("/api/items", body, content_type=content_type)
    assert response.status_code == status
    assert response["Content-Type"] == JSON
    assert response.json()["error"] == error


@pytest.mark.parametrize("field", ["name", "price", "quantity", "tags"])
async def test_a_null_in_a_patch_is_422_and_changes_nothing(
    async_client, item_payload, field
):
    item = (
        await async_client.post("/api/items", item_payload, content_type=JSON)
    ).json()
    response = await async_client.patch(
        f"/api/items/{item['id']}", {field: None}, content_type=JSON
    )
    assert response.status_code == 422
    assert [f["field"] for f in response.json()["fields"]] == [field]
    assert (await async_client.get(f"/api/items/{item['id']}")).json() == item


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("post", "/api/items", {"name": "a\x00b", "category": "c", "price": "1"}),
        (
            "post",
            "/api/items",
            {"name": "a", "category": "c", "price": "1", "tags": ["t\x00"]},
        ),
        ("post", "/api/categories", {"name": "\x00"}),
        ("get", "/api/items?category=a%00b", None),
    ],
)
async def test_a_nul_character_anywhere_is_a_client_error(
    async_client, method, path, body
):
    if body is None:
        response = await async_client.get(path)
    else:
        response = await getattr(async_client, method)(path, body, content_type=JSON)
    assert response.status_code in (400, 422)
    assert "NUL" in response.content.decode()


async def test_field_errors_name_the_field_without_echoing_input(async_client):
    body = b'{"name": "a", "category": "a", "price": "1", "quantity": "secret"}'
    response = await async_client.post("/api/items", body, content_type=JSON)
    fields = response.json()["fields"]
    assert [field["field"] for field in fields] == ["quantity"]
    assert "secret" not in response.content.decode()


@pytest.mark.parametrize("where", ["body", "query"])
async def test_field_errors_cut_a_long_field_name(async_client, where):
    key = "k" * 30_000
    if where == "body":
        body = json.dumps({"name": "a", "category": "a", "price": "1", key: 1})
        response = await async_client.post("/api/items", body, content_type=JSON)
    else:
        response = await async_client.get(f"/api/items?{key}=1")
    assert response.status_code == {"body": 422, "query": 400}[where]
    assert [field["field"] for field in response.json()["fields"]] == [
        "k" * (FIELD_NAME_CHARS - 1) + "…"
    ]
    assert len(response.content) < 1024


async def test_field_errors_are_capped_and_escaped(async_client):
    unknown = {"\u202eevil\x1b[0m": 1, **{f"k{i}": 1 for i in range(1000)}}
    body = json.dumps({"name": "a", "category": "a", "price": "1", **unknown})
    response = await async_client.post("/api/items", body, content_type=JSON)
    answer = response.json()
    assert len(answer["fields"]) == MAX_FIELD_ERRORS
    assert answer["fields"][0]["field"] == "\\u202eevil\\x1b[0m"
    assert "1001 errors" in answer["message"]


async def test_oversized_body_is_413(async_client, settings):
    settings.API_MAX_BODY_BYTES = 1024
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024
    body = b'{"name": "' + b"x" * 2048 + b'", "category": "a", "price": "1"}'
    response = await async_client.post("/api/items", body, content_type=JSON)
    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"


@pytest.mark.parametrize(
    ("method", "path", "status", "error"),
    [
        ("get", "/api/items/99999999999999999999999", 404, "not_found"),
        ("get", "/api/items/0", 404, "not_found"),
        ("get", "/nowhere", 404, "not_found"),
        ("put", "/api/items", 405, "method_not_allowed"),
        ("get", "/api/items?limit=0", 400, "invalid_query"),
        ("get", "/api/items?limit=abc", 400, "invalid_query"),
        ("get", "/api/items?unknown=1", 400, "invalid_query"),
    ],
)
async def test_bad_requests_are_json_4xx(async_client, method, path, status, error):
    response = await getattr(async_client, method)(path)
    assert response.status_code == status
    assert response.json()["error"] == error


async def test_405_names_the_allowed_methods(async_client):
    response = await async_client.put("/api/items")
    assert set(response["Allow"].split(", ")) >= {"GET", "POST"}


async def test_unknown_host_is_400_json(async_client):
    response = await async_client.get("/healthz", headers={"host": "evil.example"})
    assert response.status_code == 400
    assert response.json()["error"] == "bad_request"
