"""JSON in and out for API views: every client error is a 4xx with a JSON body.

Each handler of an ApiView declares its contract with @operation: the schemas of
its body and query, which it is handed already validated, and of its answers.
core.openapi builds the published document from the same declarations.
"""

import functools
import json
from dataclasses import dataclass
from http import HTTPStatus

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, JsonResponse
from django.urls import reverse
from django.views import View
from django.views.decorators.csrf import csrf_exempt
from pydantic import BaseModel, ConfigDict, ValidationError

from core import auth, database, metrics, ratelimit, tracing
from core.context import REQUEST_ID

# What a 503 asks clients to wait before trying again: a busy pool frees up fast,
# and a restarted server is back within seconds.
RETRY_AFTER_SECONDS = 1


class Answer(BaseModel):
    """A response body's model, for the document: a field the API sends but its
    model lacks fails the fuzzer's conformance check (tests/test_openapi.py)."""

    model_config = ConfigDict(extra="forbid")


class FieldError(Answer):
    field: str
    message: str
    type: str


class ErrorBody(Answer):
    """Every error answer of the API (error_response)."""

    error: str
    message: str
    request_id: str
    # Only when tracing is on (core.tracing): the trace to look the error up by.
    trace_id: str | None = None
    # Only in answers to a body or query that does not match its schema.
    fields: list[FieldError] = []


class ApiError(Exception):
    """Raised by API code; ApiView turns it into the JSON error response."""

    def __init__(
        self, status: int, code: str, message: str, fields=None, retry_after=None
    ):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.fields = fields
        self.retry_after = retry_after

    def response(self) -> JsonResponse:
        response = error_response(self.status, self.code, self.message, self.fields)
        if self.retry_after is not None:
            response["Retry-After"] = str(self.retry_after)
        return response


def unavailable(code: str, message: str) -> ApiError:
    """A 503 that asks the client to retry after RETRY_AFTER_SECONDS."""
    return ApiError(503, code, message, retry_after=RETRY_AFTER_SECONDS)


def error_response(status: int, code: str, message: str, fields=None) -> JsonResponse:
    body = {"error": code, "message": message, "request_id": REQUEST_ID.get()}
    if (trace_id := tracing.current_trace_id()) is not None:
        body["trace_id"] = trace_id
    if fields:
        body["fields"] = fields
    return JsonResponse(body, status=status)


# A field error names its field (pydantic's `loc`: a path of keys and indexes),
# and the client chose those keys: a 30 KB key or thousands of unknown ones must
# not come back whole. So each name is cut to FIELD_NAME_CHARS, its non-printable
# characters escaped, and at most MAX_FIELD_ERRORS errors are listed.
FIELD_NAME_CHARS = 64
MAX_FIELD_ERRORS = 20


def _field_name(loc: tuple) -> str:
    name = "".join(
        char if char.isprintable() else char.encode("unicode_escape").decode()
        for char in ".".join(str(part) for part in loc)
    )
    if len(name) > FIELD_NAME_CHARS:
        return name[: FIELD_NAME_CHARS - 1] + "…"
    return name


def _invalid(status: int, code: str, message: str, exc: ValidationError) -> ApiError:
    """The ApiError of input that does not match its schema, its errors listed."""
    # The rejected input is left out: it can be large or hold secrets.
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    if len(errors) > MAX_FIELD_ERRORS:
        message += f" ({len(errors)} errors, the first {MAX_FIELD_ERRORS} listed)"
    fields = [
        {
            "field": _field_name(error["loc"]),
            "message": error["msg"],
            "type": error["type"],
        }
        for error in errors[:MAX_FIELD_ERRORS]
    ]
    return ApiError(status, code, message, fields)


def body_of(request: HttpRequest) -> bytes:
    """The request's body, or an ApiError (413) if it exceeds API_MAX_BODY_BYTES:
    a larger one is not read."""
    limit = settings.API_MAX_BODY_BYTES
    too_large = ApiError(413, "payload_too_large", f"the body exceeds {limit} bytes")
    declared = request.META.get("CONTENT_LENGTH") or "0"
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    try:
        body = request.body
    except RequestDataTooBig:
        raise too_large from None
    if len(body) > limit:
        raise too_large
    return body


def parse_body[T: BaseModel](request: HttpRequest, schema: type[T]) -> T:
    """The request's JSON body validated by `schema`, or an ApiError."""
    if request.content_type != "application/json":
        raise ApiError(
            415, "unsupported_media_type", "send Content-Type: application/json"
        )
    body = body_of(request)
    try:
        return schema.model_validate_json(body)
    except ValidationError as exc:
        if any(error["type"] == "json_invalid" for error in exc.errors()):
            raise ApiError(
                400, "malformed_json", "the body is not valid JSON"
            ) from None
        raise _invalid(
            422, "validation_failed", "the body does not match the schema", exc
        ) from None


def parse_query[T: BaseModel](request: HttpRequest, schema: type[T]) -> T:
    try:
        return schema.model_validate(request.GET.dict())
    except ValidationError as exc:
        raise _invalid(
            400, "invalid_query", "the query string is not valid", exc
        ) from None


def drop_null(field: dict) -> None:
    """Removes null from a field's JSON Schema, for a field that may be left out
    but never be null (a query parameter, a Patch field)."""
    choices = [c for c in field.pop("anyOf", []) if c.get("type") != "null"]
    if choices:
        field.update(choices[0] if len(choices) == 1 else {"anyOf": choices})
    if field.get("default", "") is None:
        del field["default"]


@dataclass(frozen=True)
class Stream:
    """A response body streamed in `media_type`, described in words: OpenAPI 3.1
    has no schema for a sequence of records."""

    media_type: str
    description: str


# What any request with a body can be refused for (parse_body), and any with a
# query (parse_query). Every operation can also answer 401 (a token that is not
# valid, or none where one is needed), 429 (its caller is over its rate limit)
# and 503 (ApiView.dispatch).
BODY_ERRORS = (400, 413, 415, 422)
QUERY_ERRORS = (400,)
UNAUTHORIZED = 401
RATE_LIMITED = 429
UNAVAILABLE = 503
# Methods that change nothing: the only ones without a token, unless API_AUTH_READS.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class Operation:
    """One handler's contract: its success answers by status (a model, a Stream,
    or None for no body), the models of its body and query, the other error
    statuses it answers, whether it takes an Idempotency-Key, and the URL name of
    the resource its success answer says is at `Location`."""

    responses: dict[int, type[BaseModel] | Stream | None]
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    errors: tuple[int, ...] = ()
    idempotent: bool = False
    location: str | None = None

    def error_statuses(self) -> list[int]:
        statuses = {*self.errors, UNAUTHORIZED, RATE_LIMITED, UNAVAILABLE}
        if self.body is not None:
            statuses.update(BODY_ERRORS)
        if self.query is not None:
            statuses.update(QUERY_ERRORS)
        return sorted(statuses)


def operation(
    responses, *, body=None, query=None, errors=(), idempotent=False, location=None
):
    """Declares an ApiView handler's contract (Operation) and enforces its input
    side: the handler gets `body=` and `query=` already validated by those models.
    An `idempotent` create takes an Idempotency-Key (core.idempotency): the
    handler gets `idempotency_key=` to store its answer with, in its transaction,
    and a retry with the same key gets the first answer without calling it.
    A create with a `location` (a URL name taking the new resource's id) says
    where the resource is in its success answer's Location header, a replayed
    answer too: it is set here from the answer's `id`, not stored with it."""

    def declare(handler):
        # Imported once the views declare their handlers: core.idempotency builds
        # on this module.
        from core import idempotency

        @functools.wraps(handler)
        async def validated(self, request, *args, **kwargs):
            if query is not None:
                kwargs["query"] = parse_query(request, query)
            if body is not None:
                kwargs["body"] = parse_body(request, body)
            if not idempotent:
                idempotency.refuse_key(request)
                response = await handler(self, request, *args, **kwargs)
            else:
                response = await idempotency.answer_once(
                    request,
                    lambda key: handler(
                        self, request, *args, idempotency_key=key, **kwargs
                    ),
                )
            if location is not None and response.status_code in responses:
                created = json.loads(response.content)["id"]
                response["Location"] = reverse(location, args=[created])
            return response

        validated.operation = Operation(
            responses, body, query, tuple(errors), idempotent, location
        )
        return validated

    return declare


class ApiView(View):
    """Async class-based view whose errors, 405 included, are JSON, and whose
    callers show a bearer token (core.auth) to write, and to read where
    needs_token() says so. The caller is request.principal (None without a token)."""

    # Reads of this view need a token even when API_AUTH_READS is off.
    reads_need_token = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # HEAD is answered by get, as Django answers it, but from the class:
        # View.setup would store the bound method self.get on each instance, a
        # reference cycle that keeps the view and its request for the garbage
        # collector instead of freeing them with the response.
        if hasattr(cls, "get") and not hasattr(cls, "head"):
            cls.head = cls.get

    @classmethod
    def as_view(cls, **initkwargs):
        # Only a bearer token authenticates, never a cookie: nothing a browser
        # sends on its own counts, so there is no request to forge (as DRF's APIView).
        return csrf_exempt(super().as_view(**initkwargs))

    @classmethod
    def needs_token(cls, method: str) -> bool:
        return (
            method not in SAFE_METHODS
            or cls.reads_need_token
            or settings.API_AUTH_READS
        )

    async def dispatch(self, request, *args, **kwargs):
        try:
            # A method the view does not answer is a 405 for anyone.
            if hasattr(self, request.method.lower()):
                await self._authenticate(request)
            return await super().dispatch(request, *args, **kwargs)
        except auth.Unauthorized as exc:
            response = error_response(UNAUTHORIZED, "unauthorized", str(exc))
            response["WWW-Authenticate"] = exc.challenge()
            return response
        except auth.IssuerUnavailable as exc:
            return unavailable("issuer_unavailable", str(exc)).response()
        except ApiError as exc:
            return exc.response()
        except Exception as exc:
            reason = database.unavailable(exc)
            if reason is None:
                raise
            metrics.DB_UNAVAILABLE.labels(reason).inc()
            return unavailable(
                "database_unavailable", "the database is not available, retry"
            ).response()

    async def _authenticate(self, request) -> None:
        request.principal = await auth.authenticate(
            request.headers.get("Authorization")
        )
        if request.principal is None:
            if self.needs_token(request.method):
                raise auth.Unauthorized("this needs a bearer token", token_sent=False)
            return
        wait = await ratelimit.wait_before(request.principal)
        if wait is not None:
            raise ApiError(
                RATE_LIMITED,
                "rate_limited",
                f"over {settings.API_RATE_LIMIT_REQUESTS} requests in "
                f"{settings.API_RATE_LIMIT_SECONDS} s for this token",
                retry_after=wait,
            )

    def http_method_not_allowed(self, request, *args, **kwargs):
        response = error_response(
            405, "method_not_allowed", f"{request.method} is not allowed"
        )
        response["Allow"] = ", ".join(self._allowed_methods())

        async def respond():
            return response

        return respond()


def _handler(status: HTTPStatus):
    def handler(request, exception=None):
        return error_response(
            status, status.phrase.lower().replace(" ", "_"), status.phrase
        )

    return handler


# Django's error handlers (config/urls.py), so that errors outside ApiView are JSON too.
bad_request = _handler(HTTPStatus.BAD_REQUEST)
permission_denied = _handler(HTTPStatus.FORBIDDEN)
not_found = _handler(HTTPStatus.NOT_FOUND)
server_error = _handler(HTTPStatus.INTERNAL_SERVER_ERROR)


def csrf_failure(request, reason=""):
    """CSRF_FAILURE_VIEW: a cookie-authenticated write without its CSRF token."""
    return error_response(403, "csrf_failed", f"CSRF verification failed: {reason}")
