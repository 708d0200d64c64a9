"""The API's OpenAPI document (core.openapi): valid OpenAPI 3.1, true to the URL
patterns and views, and the ground for a property-based fuzzer (schemathesis)
that sends every operation generated requests, valid and not, and checks each
answer against it: never a 5xx, every status and body as documented."""

import asyncio
import json
import re

import pytest
import requests
import schemathesis
from django.urls import resolve
from hypothesis import HealthCheck, settings
from openapi_spec_validator import validate
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from config.asgi import application
from core.openapi import api_routes, document
{%- if cookiecutter.tasks != "none" %}
from items.models import Report
{%- endif %}
from tests.asgi import exchange, request

pytestmark = pytest.mark.django_db(transaction=True)

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
# Examples per operation and phase: enough to reach each operation's error answers,
# few enough that the whole fuzz takes seconds.
EXAMPLES = 25
# Streams that end only when the client leaves: documented, not fuzzed.
ENDLESS = "text/event-stream"


def concrete(path: str) -> str:
    """A documented path with an id for each parameter: every one is an id."""
    return re.sub(r"\{[^}]+\}", "1", path)


async def test_document_is_served_and_is_valid_openapi_3_1():
    start, body = await exchange(application, "GET", "/api/openapi.json")
    assert start["status"] == 200
    served = json.loads(body)
    assert served == document()
    assert served["openapi"] == "3.1.0"
    validate(served)


async def test_every_api_route_is_documented_with_the_methods_its_view_answers():
    """Each URL pattern under /api is a path of the document, and each path's
    view refuses every method the document leaves out with a 405 whose Allow
    lists the documented ones (with OPTIONS, and HEAD beside a GET, which Django
    answers for every view)."""
    paths = document()["paths"]
    routes = {resolve(concrete(path)).route for path in paths}
    assert routes == {route for route, _, _ in api_routes()}
    for path, operations in paths.items():
        documented = {method.upper() for method in operations}
        added = {"OPTIONS", "HEAD"} if "GET" in documented else {"OPTIONS"}
        allowed = documented | added
        for method in set(METHODS) - documented:
            start, body = await exchange(application, method, concrete(path))
            assert start["status"] == 405, (method, path)
            headers = {name.lower(): value for name, value in start["headers"]}
            assert set(headers[b"allow"].decode().split(", ")) == allowed, path
            assert json.loads(body)["error"] == "method_not_allowed"


def endless_operations(document: dict) -> list[str]:
    return [
        entry["operationId"]
        for operations in document["paths"].values()
        for entry in operations.values()
        if any(ENDLESS in r.get("content", {}) for r in entry["responses"].values())
    ]


schema = schemathesis.openapi.from_dict(document()).exclude(
    operation_id=endless_operations(document())
)


@pytest.fixture(scope="session")
async def event_loop_of_session():
    """The loop the async tests, and the database pools they open, run on."""
    return asyncio.get_running_loop()


@pytest.fixture
async def stock(item_payload):
    """Items 1 to 5{% if cookiecutter.tasks != "none" %}, and report 1{% endif %}: the ids the fuzzer tries first find
    something to read, change and delete, not only a 404."""
    for index in range(5):
        payload = {**item_payload, "name": f"item {index}"}
        status, _, _ = await request(application, "POST", "/api/items", payload)
        assert status == 201
{%- if cookiecutter.tasks != "none" %}
    await Report.objects.acreate(category="tools")
{%- endif %}


@pytest.mark.django_db(transaction=True, reset_sequences=True)
@pytest.mark.usefixtures("stock")
@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    # The same requests on every run, and no example database left behind.
    derandomize=True,
    database=None,
    deadline=None,
    # The database is the test's own, and its rows outlive an example on purpose.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_fuzzed_requests_are_answered_as_documented(case, event_loop_of_session):
    """Each request is made as schemathesis sends it (requests prepares it), then
    goes through the whole ASGI application on the session's event loop."""
    sent = requests.Request(
        **case.as_transport_kwargs(base_url="http://localhost")
    ).prepare()
    body = sent.body.encode() if isinstance(sent.body, str) else sent.body or b""
    headers = [(k.lower().encode(), v.encode()) for k, v in sent.headers.items()]
    start, content = event_loop_of_session.run_until_complete(
        exchange(application, sent.method, sent.path_url, body, headers)
    )
    response = schemathesis.Response(
        status_code=start["status"],
        headers={k.decode(): [v.decode()] for k, v in start["headers"]},
        content=content,
        request=sent,
        elapsed=0.0,
        verify=True,
    )
    case.validate_response(
        response,
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ],
    )
