"""The API's OpenAPI 3.1 document, served at /api/openapi.json.

Built once, from what the API runs on: the URL patterns under /api (their
converters give the path parameters), the @operation each ApiView handler declares
(core.api) and the JSON Schema (2020-12, OpenAPI 3.1's own dialect) that pydantic
makes of the declared models. A handler without a declaration is an error.
"""

import functools
import re
from http import HTTPStatus
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.http import JsonResponse
from django.urls import URLPattern, URLResolver, get_resolver
from pydantic import RootModel
from pydantic.json_schema import models_json_schema

from core import idempotency
from core.api import (
    RATE_LIMITED,
    UNAUTHORIZED,
    UNAVAILABLE,
    ApiView,
    ErrorBody,
    Operation,
    Stream,
    drop_null,
    operation,
)

PREFIX = "api/"
COMPONENTS = "#/components/schemas/{model}"
JSON = "application/json"
BEARER = "bearer"
# A route's <converter:name> or <name>, as django.urls.resolvers reads it.
_PARAMETER = re.compile(r"<(?:[^>:]+:)?([^>]+)>")
# What an `idempotent` operation takes and answers (core.idempotency).
_IDEMPOTENCY_KEY = {
    "name": idempotency.HEADER,
    "in": "header",
    "required": False,
    "description": "Sent again with the same body, gets the first answer again.",
    "schema": {
        "type": "string",
        "minLength": 1,
        "maxLength": idempotency.MAX_LENGTH,
        "pattern": "^[\\x20-\\x7e]+$",
    },
}
_REPLAYED = {
    "Idempotent-Replayed": {
        "description": "true: the answer given earlier to this Idempotency-Key.",
        "schema": {"type": "string", "enum": ["true"]},
    }
}

# What a create with a `location` answers (core.api.operation).
_LOCATION = {
    "Location": {
        "description": "The path of the resource this request created.",
        "schema": {"type": "string"},
    }
}


def api_routes() -> list[tuple[str, dict, type[ApiView]]]:
    """(route, converters by parameter name, view class) of each ApiView under
    PREFIX. A route under it that something else serves (a team's plain function
    view) declares no contract: the document leaves it out rather than guess it,
    and a service updated to this template keeps passing its checks."""
    found = []

    def walk(patterns, prefix: str, converters: dict):
        for entry in patterns:
            route = prefix + str(entry.pattern)
            known = {**converters, **entry.pattern.converters}
            if isinstance(entry, URLResolver):
                walk(entry.url_patterns, route, known)
            elif isinstance(entry, URLPattern) and route.startswith(PREFIX):
                view = getattr(entry.callback, "view_class", None)
                if isinstance(view, type) and issubclass(view, ApiView):
                    found.append((route, known, view))

    walk(get_resolver().url_patterns, "", {})
    return found


def handlers(view: type[ApiView]) -> dict[str, Any]:
    """The view's own handlers by method. Django answers OPTIONS (and HEAD where
    there is a GET) for every view; the document leaves those two out."""
    return {
        method: getattr(view, method)
        for method in view.http_method_names
        if method not in ("head", "options") and hasattr(view, method)
    }


def _query_parameters(query) -> list[dict]:
    schema = query.model_json_schema(ref_template=COMPONENTS)
    parameters = []
    for name, field in schema["properties"].items():
        field.pop("title", None)
        drop_null(field)
        parameters.append(
            {
                "name": name,
                "in": "query",
                "required": name in schema.get("required", []),
                "schema": field,
            }
        )
    return parameters


def _content(answer, refs: dict) -> dict:
    if isinstance(answer, Stream):
        return {"description": answer.description, "content": {answer.media_type: {}}}
    return {"content": {JSON: {"schema": refs[answer, "serialization"]}}}


def _responses(declared: Operation, refs: dict) -> dict:
    responses = {}
    for status, answer in declared.responses.items():
        responses[str(status)] = {"description": HTTPStatus(status).phrase}
        if answer is not None:
            responses[str(status)].update(_content(answer, refs))
    for status in declared.error_statuses():
        responses[str(status)] = {
            "description": HTTPStatus(status).phrase,
            **_content(ErrorBody, refs),
        }
    responses[str(UNAUTHORIZED)]["headers"] = {
        "WWW-Authenticate": {
            "description": "Bearer, and why the token sent is not valid (RFC 6750).",
            "schema": {"type": "string"},
        }
    }
    responses[str(RATE_LIMITED)]["headers"] = {
        "Retry-After": {
            "description": "Seconds until this token's window ends.",
            "schema": {"type": "integer", "minimum": 1},
        }
    }
    responses[str(UNAVAILABLE)]["headers"] = {
        "Retry-After": {
            "description": "Seconds to wait before trying again.",
            "schema": {"type": "integer", "minimum": 0},
        }
    }
    return responses


def _operation(converters: dict, view, method: str, handler, refs: dict) -> dict:
    declared = handler.operation
    entry = {
        "operationId": f"{view.__qualname__}.{method}",
        "responses": _responses(declared, refs),
    }
    # A token is optional where it is not needed: one that is sent must be valid.
    entry["security"] = (
        [{BEARER: []}] if view.needs_token(method.upper()) else [{}, {BEARER: []}]
    )
    summary = (handler.__doc__ or view.__doc__ or "").strip().split("\n")[0]
    if summary:
        entry["summary"] = summary
    parameters = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": {"type": "string", "pattern": f"^(?:{converter.regex})$"},
        }
        for name, converter in converters.items()
    ]
    if declared.query is not None:
        parameters += _query_parameters(declared.query)
    for status in declared.responses:
        headers = {}
        if declared.idempotent:
            headers.update(_REPLAYED)
        if declared.location is not None:
            headers.update(_LOCATION)
        if headers:
            entry["responses"][str(status)]["headers"] = headers
    if declared.idempotent:
        parameters.append(_IDEMPOTENCY_KEY)
    if parameters:
        entry["parameters"] = parameters
    if declared.body is not None:
        entry["requestBody"] = {
            "required": True,
            "content": {JSON: {"schema": refs[declared.body, "validation"]}},
        }
    return entry


def _models(operations: list[Operation]) -> list[tuple[type, str]]:
    """Every model of the document, with the side it is for: pydantic describes
    what a model accepts and what it answers apart."""
    models = {(ErrorBody, "serialization")}
    for declared in operations:
        if declared.body is not None:
            models.add((declared.body, "validation"))
        models.update(
            (answer, "serialization")
            for answer in declared.responses.values()
            if answer is not None and not isinstance(answer, Stream)
        )
    return sorted(models, key=lambda model: (model[0].__name__, model[1]))


@functools.cache
def document() -> dict:
    """The document, built on first use (the URL patterns do not change)."""
    return build()


def build() -> dict:
    """Raises ImproperlyConfigured for a route or handler it cannot document (the
    system check core.E001 runs it)."""
    found = [
        (route, converters, view, method, handler)
        for route, converters, view in api_routes()
        for method, handler in handlers(view).items()
    ]
    for _, _, view, method, handler in found:
        if not isinstance(getattr(handler, "operation", None), Operation):
            raise ImproperlyConfigured(
                f"{view.__module__}.{view.__qualname__}.{method} has no @operation"
            )
    refs, definitions = models_json_schema(
        _models([handler.operation for *_, handler in found]),
        ref_template=COMPONENTS,
    )
    paths: dict[str, dict] = {}
    for route, converters, view, method, handler in found:
        path = "/" + _PARAMETER.sub(r"{\1}", route)
        paths.setdefault(path, {})[method] = _operation(
            converters, view, method, handler, refs
        )
    return {
        "openapi": "3.1.0",
        "info": {"title": settings.SERVICE_NAME, "version": settings.SERVICE_VERSION},
        "paths": paths,
        "components": {
            "schemas": definitions.get("$defs", {}),
            "securitySchemes": {
                BEARER: {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A service API key (manage.py issue_api_key) "
                    "or, where OIDC_ISSUER is set, the issuer's access token.",
                }
            },
        },
    }


class Document(RootModel[dict[str, Any]]):
    """An OpenAPI 3.1 document."""


class OpenApiDocument(ApiView):
    """This document."""

    @operation({200: Document})
    async def get(self, request):
        return JsonResponse(document())
