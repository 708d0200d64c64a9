"""Idempotency-Key on creates (the IETF httpapi draft "The Idempotency-Key HTTP
Header Field"): a client that did not get the answer to a POST, a timeout or a
connection reset, sends it again with the same key and gets the first answer,
with `Idempotent-Replayed: true`, instead of creating a second resource.

- The key is scoped to its route, and its answer is kept IDEMPOTENCY_KEY_HOURS.
- The same key with another body is refused (422): it is a client's bug.
- The answer is stored in the create's own transaction (remember()), so a key is
  answered again only for a create that committed. Two requests with one key at
  once: the second's insert of the key fails the unique constraint, its
  transaction rolls back whole, and it answers the first one's answer.

Written here because no well-kept library does it for plain async Django views:
the packages that exist (django-idempotency-key, drf-idempotency) are for Django
REST framework or synchronous middleware, and store the answer after the write
has committed, in a second transaction that a crash can separate from it.
"""

import hashlib
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone

from core import reads
from core.api import ApiError, body_of
from core.models import IdempotentRequest

HEADER = "Idempotency-Key"
MAX_LENGTH = IdempotentRequest._meta.get_field("key").max_length
# Expired keys removed by each new one: the table stays bounded by the create
# rate, without a job to run.
PURGE_BATCH = 100


@dataclass(frozen=True)
class Key:
    route: str
    value: str
    fingerprint: str


def key_of(request: HttpRequest) -> Key | None:
    """The request's Idempotency-Key, scoped to its route, if it sent one;
    ApiError (400) if the key is empty, too long or not printable ASCII."""
    value = request.headers.get(HEADER)
    if value is None:
        return None
    if (
        not 0 < len(value) <= MAX_LENGTH
        or not value.isascii()
        or not value.isprintable()
    ):
        raise ApiError(
            400,
            "invalid_idempotency_key",
            f"{HEADER} must be 1 to {MAX_LENGTH} printable ASCII characters",
        )
    route = request.resolver_match.route
    return Key(route, value, hashlib.sha256(body_of(request)).hexdigest())


def refuse_key(request: HttpRequest) -> None:
    """ApiError (400) for a POST that keeps no answers by key and was sent one:
    its client expects a retry to get the first answer, and Nginx sends a keyed
    POST that an instance reset to another instance (deploy/nginx/nginx.conf),
    which is safe only where the key is kept. Refused before anything is done."""
    if request.method == "POST" and HEADER in request.headers:
        raise ApiError(
            400,
            "idempotency_key_not_supported",
            f"this operation takes no {HEADER}",
        )


def _cutoff():
    return timezone.now() - timedelta(hours=settings.IDEMPOTENCY_KEY_HOURS)


async def earlier_answer(key: Key) -> HttpResponse | None:
    """The answer already given to this key, if any."""
    found = await reads.fetch(
        IdempotentRequest.objects.filter(
            route=key.route, key=key.value, created_at__gte=_cutoff()
        ).values("fingerprint", "status", "body")
    )
    if not found:
        return None
    if found[0]["fingerprint"] != key.fingerprint:
        raise ApiError(
            422,
            "idempotency_key_reused",
            f"this {HEADER} was sent with another body",
        )
    response = HttpResponse(
        found[0]["body"], status=found[0]["status"], content_type="application/json"
    )
    response["Idempotent-Replayed"] = "true"
    return response


async def answer_once(request: HttpRequest, create) -> HttpResponse:
    """The answer of `await create(key)`, given once per Idempotency-Key: a retry
    gets the first answer again. `create` passes the key to remember() in its
    transaction; without the header the key is None (core.api.operation calls
    this for an `idempotent` handler)."""
    key = key_of(request)
    if key and (earlier := await earlier_answer(key)):
        return earlier
    try:
        return await create(key)
    except IntegrityError:
        # The same key sent twice at once: the other request made the resource.
        if key and (earlier := await earlier_answer(key)):
            return earlier
        raise


def remember(key: Key, status: int, body: dict) -> None:
    """Stores the answer, JSON `body` with `status`; call inside the create's
    transaction (synchronous)."""
    expired = IdempotentRequest.objects.filter(created_at__lt=_cutoff())
    # This key's own expired answer first: the new one takes its place.
    expired.filter(route=key.route, key=key.value).delete()
    IdempotentRequest.objects.filter(
        pk__in=list(expired.values_list("pk", flat=True)[:PURGE_BATCH])
    ).delete()
    IdempotentRequest.objects.create(
        route=key.route,
        key=key.value,
        fingerprint=key.fingerprint,
        status=status,
        body=JsonResponse(body).content.decode(),
    )
