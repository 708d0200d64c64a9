"""Every log line is one JSON object that carries the request id, errors included."""

import io
import json
import logging

import pytest
from django.urls import path

from config import urls as service_urls

pytestmark = pytest.mark.django_db(transaction=True)


async def broken_view(request):
    raise RuntimeError("boom")


# The service's URLconf plus one view that fails.
urlpatterns = [*service_urls.urlpatterns, path("broken", broken_view)]
handler500 = service_urls.handler500


@pytest.fixture
def log_output():
    """Reads what the service's console handler (settings.LOGGING) wrote, as JSON."""
    (handler,) = [h for h in logging.getLogger().handlers if h.name == "console"]
    previous = handler.setStream(io.StringIO())
    yield lambda: [json.loads(line) for line in handler.stream.getvalue().splitlines()]
    handler.setStream(previous)


async def test_request_id_from_the_proxy_is_kept(async_client):
    response = await async_client.get("/healthz", headers={"x-request-id": "abc-123"})
    assert response["X-Request-ID"] == "abc-123"


@pytest.mark.parametrize("bad", ["", "x" * 200, "a b", 'x"}'])
async def test_bad_or_missing_request_ids_are_replaced(async_client, bad):
    response = await async_client.get("/healthz", headers={"x-request-id": bad})
    assert len(response["X-Request-ID"]) == 32
    assert response["X-Request-ID"] != bad


async def test_access_log_line_is_json_with_the_request_id(async_client, log_output):
    await async_client.get("/api/items?limit=1", headers={"x-request-id": "req-1"})
    (access,) = [line for line in log_output() if line["logger"] == "core.access"]
    assert access["request_id"] == "req-1"
    assert access["route"] == "api/items"
    assert access["status"] == 200
    assert access["method"] == "GET"
    assert access["service"]
    assert access["time"]


@pytest.mark.urls(__name__)
async def test_unhandled_error_is_a_json_500_logged_with_its_request_id(
    async_client, log_output
):
    async_client.raise_request_exception = False
    response = await async_client.get("/broken", headers={"x-request-id": "req-500"})
    assert response.status_code == 500
    assert response.json()["error"] == "internal_server_error"
    assert response.json()["request_id"] == "req-500"
    assert "boom" not in response.content.decode()
    lines = log_output()
    (error,) = [line for line in lines if line["logger"] == "django.request"]
    assert error["level"] == "ERROR"
    assert error["request_id"] == "req-500"
    assert "RuntimeError: boom" in error["exc_info"]
    (access,) = [line for line in lines if line["logger"] == "core.access"]
    assert (access["level"], access["status"]) == ("ERROR", 500)
    assert access["request_id"] == "req-500"
