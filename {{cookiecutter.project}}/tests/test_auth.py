"""Who may call the API (core.auth): writes, the export, and reads with
API_AUTH_READS need a bearer token, an API key of this service or an access
token of the configured OIDC issuer (a local JWKS endpoint here); every token
that is not valid is refused with 401 and nothing is written."""

import asyncio
import base64
import datetime
import hashlib
import hmac
import io
import json
import re
import subprocess
import sys
import time
import uuid
from types import SimpleNamespace

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings as django_settings
from django.core.management import call_command
from django.core.management.base import CommandError
from prometheus_client import REGISTRY

from config.asgi import application
from core import auth, ratelimit
from core.api import SAFE_METHODS
from core.models import ApiKey
from core.openapi import document
from items.models import Item
from tests.asgi import exchange, request
from tests.issuer import AUDIENCE, rsa_key

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def item(item_payload):
    return item_payload


async def items_written() -> int:
    return await Item.objects.acount()


async def test_a_write_without_a_token_is_refused_and_writes_nothing(item):
    status, headers, body = await request(
        application, "POST", "/api/items", item, token=None
    )
    assert status == 401
    assert headers["www-authenticate"] == 'Bearer realm="api"'
    assert body["error"] == "unauthorized"
    assert await items_written() == 0


async def test_every_write_the_api_documents_needs_a_token(item):
    status, _, created = await request(application, "POST", "/api/items", item)
    assert status == 201
    refused = []
    for path, operations in document()["paths"].items():
        for method in operations:
            if method.upper() in SAFE_METHODS:
                continue
            concrete = re.sub(r"\{[^}]+\}", str(created["id"]), path)
            status, _, _ = await request(
                application, method.upper(), concrete, {"quantity": 1}, token=None
            )
            refused.append((method, path, status))
    assert refused
    assert {status for *_, status in refused} == {401}, refused
    assert await Item.objects.filter(quantity=item["quantity"]).acount() == 1


async def test_reads_are_public_unless_api_auth_reads(settings):
    assert (await request(application, "GET", "/api/items", token=None))[0] == 200
    settings.API_AUTH_READS = True
    assert (await request(application, "GET", "/api/items", token=None))[0] == 401
    assert (await request(application, "GET", "/api/items"))[0] == 200


async def test_the_export_needs_a_token():
    assert (await request(application, "GET", "/api/items/export", token=None))[
        0
    ] == 401


async def test_a_token_sent_to_a_public_read_must_be_valid():
    status, headers, _ = await request(
        application, "GET", "/api/items", token="sk_0123456789ab_" + "x" * 43
    )
    assert status == 401
    assert 'error="invalid_token"' in headers["www-authenticate"]


@pytest.mark.parametrize(
    "authorization",
    ["Basic dXNlcjpwdw==", "Bearer", "Bearer ", "sk_0123456789ab_" + "t" * 43],
)
async def test_an_authorization_that_is_not_a_bearer_token_is_refused(
    authorization, item
):
    start, _ = await exchange(
        application,
        "POST",
        "/api/items",
        json.dumps(item).encode(),
        [
            (b"content-type", b"application/json"),
            (b"authorization", authorization.encode()),
        ],
        token=None,
    )
    assert start["status"] == 401
    assert await items_written() == 0


def issue(name: str, *args) -> str:
    out = io.StringIO()
    call_command("issue_api_key", name, *args, stdout=out)
    return out.getvalue().strip()


async def test_an_issued_key_works_until_revoked_and_only_its_hash_is_kept(item):
    token = await sync_to_async(issue)("billing")
    _, prefix, secret = token.split("_", 2)
    stored = await ApiKey.objects.aget(prefix=prefix)
    assert secret not in (stored.digest, stored.prefix, stored.name)
    assert stored.digest == auth.digest(secret)
    assert (await request(application, "POST", "/api/items", item, token=token))[
        0
    ] == 201

    await sync_to_async(call_command)("revoke_api_key", "billing", stdout=io.StringIO())
    status, _, body = await request(
        application, "POST", "/api/items", item, token=token
    )
    assert status == 401
    assert body["message"] == "the API key is revoked"
    assert await items_written() == 1


async def test_an_expired_key_is_refused(item):
    token = await sync_to_async(issue)("short", "--expires-in-days", "1")
    await ApiKey.objects.filter(name="short").aupdate(
        expires_at=datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    )
    status, _, body = await request(
        application, "POST", "/api/items", item, token=token
    )
    assert (status, body["message"]) == (401, "the API key has expired")


async def test_a_key_with_a_wrong_secret_is_refused(item):
    token = await sync_to_async(issue)("billing")
    forged = token[:-1] + ("A" if token[-1] != "A" else "B")
    status, _, body = await request(
        application, "POST", "/api/items", item, token=forged
    )
    assert (status, body["message"]) == (401, "the API key is not valid")
    assert await items_written() == 0


def test_the_commands_refuse_bad_input():
    with pytest.raises(CommandError, match="1 to 100"):
        issue("x" * 101)
    with pytest.raises(CommandError, match="at least 1"):
        issue("billing", "--expires-in-days", "0")
    with pytest.raises(CommandError, match="no valid key"):
        call_command("revoke_api_key", "nobody", stdout=io.StringIO())
    assert not ApiKey.objects.exclude(name="tests").exists()


# OIDC access tokens, against a JWKS served on 127.0.0.1.


async def test_an_access_token_of_the_issuer_writes(issuer, item):
    status, _, _ = await request(
        application, "POST", "/api/items", item, token=issuer.token()
    )
    assert status == 201
    assert issuer.fetches == 1


def encode(part: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=").decode()


def unsigned(issuer) -> str:
    header = {"alg": "none", "typ": "JWT", "kid": issuer.kid}
    payload = json.loads(base64.urlsafe_b64decode(issuer.token().split(".")[1] + "=="))
    return f"{encode(header)}.{encode(payload)}."


def tampered(issuer) -> str:
    header, payload, signature = issuer.token().split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["sub"] = "admin"
    return f"{header}.{encode(claims)}.{signature}"


def hs256_with_the_public_key(issuer) -> str:
    """The algorithm-confusion attack: the public key used as an HMAC secret."""
    header = {"alg": "HS256", "typ": "JWT", "kid": issuer.kid}
    now = int(time.time())
    claims = {"iss": issuer.url, "aud": AUDIENCE, "sub": "x", "exp": now + 300}
    signing_input = f"{encode(header)}.{encode(claims)}"
    mac = hmac.new(issuer.public_pem(), signing_input.encode(), hashlib.sha256)
    signature = base64.urlsafe_b64encode(mac.digest()).rstrip(b"=").decode()
    return f"{signing_input}.{signature}"


REFUSED = {
    "wrong issuer": lambda issuer: issuer.token(iss="https://elsewhere.example"),
    "wrong audience": lambda issuer: issuer.token(aud="another-service"),
    "expired": lambda issuer: issuer.token(exp=int(time.time()) - 3600),
    "no subject": lambda issuer: issuer.token(sub=None),
    "no expiry": lambda issuer: issuer.token(exp=None),
    "alg none": unsigned,
    "HS256 with the public key": hs256_with_the_public_key,
    "tampered payload": tampered,
    "another key": lambda issuer: issuer.token(key=rsa_key(1)),
    "unknown key id": lambda issuer: issuer.token(headers={"kid": "key-9"}),
    "RS512 not allowed": lambda issuer: issuer.token(algorithm="RS512"),
}


@pytest.mark.parametrize("case", REFUSED)
async def test_a_token_that_is_not_valid_is_refused_and_writes_nothing(
    case, issuer, item
):
    token = REFUSED[case](issuer)
    status, headers, body = await request(
        application, "POST", "/api/items", item, token=token
    )
    assert status == 401, body
    assert headers["www-authenticate"].startswith(
        'Bearer realm="api", error="invalid_token"'
    )
    assert await items_written() == 0


async def test_a_token_in_another_algorithm_than_its_keys_is_refused(
    issuer, item, settings
):
    """PS256 is allowed, but the issuer bound this key to RS256 (its JWK's alg)."""
    settings.OIDC_ALGORITHMS = ["RS256", "PS256"]
    token = issuer.token(algorithm="PS256")
    status, _, body = await request(
        application, "POST", "/api/items", item, token=token
    )
    assert status == 401, body
    assert await items_written() == 0


async def test_unknown_key_ids_fetch_the_jwks_again_at_most_once_per_interval(
    issuer, item, settings
):
    settings.OIDC_JWKS_REFETCH_SECONDS = 3600
    assert (
        await request(application, "POST", "/api/items", item, token=issuer.token())
    )[0] == 201
    for number in range(5):
        token = issuer.token(headers={"kid": f"made-up-{number}"})
        assert (await request(application, "POST", "/api/items", item, token=token))[
            0
        ] == 401
    assert issuer.fetches == 1


async def test_a_rotated_key_is_fetched_when_a_token_names_it(issuer, item, settings):
    settings.OIDC_JWKS_REFETCH_SECONDS = 0
    assert (
        await request(application, "POST", "/api/items", item, token=issuer.token())
    )[0] == 201
    issuer.key = rsa_key(2)
    issuer.kid = "key-2"
    assert (
        await request(application, "POST", "/api/items", item, token=issuer.token())
    )[0] == 201
    assert issuer.fetches == 2


async def test_an_issuer_that_cannot_be_reached_is_a_503_not_a_401(
    issuer, item, settings
):
    token = issuer.token()
    settings.OIDC_JWKS_URL = issuer.url + "/nowhere"
    status, headers, body = await request(
        application, "POST", "/api/items", item, token=token
    )
    assert (status, body["error"]) == (503, "issuer_unavailable")
    assert headers["retry-after"]
    assert await items_written() == 0


# Another worker or pod of the service: three requests of one caller, 20 s into
# the window the test uses too.
ANOTHER_PROCESS = """
import asyncio, sys
from types import SimpleNamespace
import django
django.setup()
from django.conf import settings
from core import ratelimit
from core.auth import Principal
settings.API_RATE_LIMIT_REQUESTS = 3
settings.API_RATE_LIMIT_SECONDS = 60
ratelimit.time = SimpleNamespace(time=lambda: 6000.0 + 20)
caller = Principal("api_key", sys.argv[1], None)
async def send_three():
    for _ in range(3):
        assert await ratelimit.wait_before(caller) is None
asyncio.run(send_three())
"""


@pytest.mark.skipif(
    not django_settings.REDIS_URL,
    reason="needs Redis (REDIS_URL): the count is in-process",
)
async def test_a_callers_requests_count_in_every_process_through_redis(
    settings, monkeypatch
):
    """One count per caller for every worker and pod: after another process sent
    the caller's three requests, this one refuses its fourth."""
    settings.API_RATE_LIMIT_REQUESTS = 3
    settings.API_RATE_LIMIT_SECONDS = 60
    monkeypatch.setattr(ratelimit, "time", SimpleNamespace(time=lambda: 6000.0 + 20))
    subject = f"shared-{uuid.uuid4()}"
    await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", ANOTHER_PROCESS, subject],
        cwd=django_settings.BASE_DIR,
        check=True,
    )
    assert await ratelimit.wait_before(auth.Principal("api_key", subject, None)) == 40
    # Another caller's count is its own.
    other = auth.Principal("api_key", f"{subject}-2", None)
    assert await ratelimit.wait_before(other) is None


async def test_a_token_over_its_rate_limit_gets_429_until_its_window_ends(
    item, settings, monkeypatch
):
    settings.API_RATE_LIMIT_REQUESTS = 3
    settings.API_RATE_LIMIT_SECONDS = 60
    # 20 s into a window: never across its edge, whenever the test runs.
    monkeypatch.setattr(ratelimit, "time", SimpleNamespace(time=lambda: 6000.0 + 20))
    limited = REGISTRY.get_sample_value(
        "django_http_rate_limited_total", {"kind": "api_key"}
    )
    for _ in range(3):
        assert (await request(application, "GET", "/api/items"))[0] == 200
    status, headers, body = await request(application, "POST", "/api/items", item)
    assert (status, body["error"], headers["retry-after"]) == (
        429,
        "rate_limited",
        "40",
    )
    assert await items_written() == 0
    # The export, the costliest read, counts and is refused alike.
    status, _, body = await request(application, "GET", "/api/items/export")
    assert (status, body["error"]) == (429, "rate_limited")
    after = REGISTRY.get_sample_value(
        "django_http_rate_limited_total", {"kind": "api_key"}
    )
    assert after == (limited or 0) + 2
    # Another token has a count of its own, and a read without one has none.
    other = await sync_to_async(issue)("other")
    assert (await request(application, "POST", "/api/items", item, token=other))[
        0
    ] == 201
    assert (await request(application, "GET", "/api/items", token=None))[0] == 200
    # The next window starts afresh.
    monkeypatch.setattr(ratelimit, "time", SimpleNamespace(time=lambda: 6060.0 + 1))
    assert (await request(application, "POST", "/api/items", item))[0] == 201
