"""Who is calling: the bearer token of an API request or a WebSocket connection.

A client sends `Authorization: Bearer <token>`, where the token is one of:
- a service API key, `sk_<prefix>_<secret>` (core.models.ApiKey): the prefix
  finds its row, the SHA-256 of the secret must match the stored one (compared
  in constant time), and the key must be neither revoked nor expired;
- an OIDC access token, when OIDC_ISSUER is set: a JWT that the issuer signed
  with a key of its JWKS, in one of OIDC_ALGORITHMS, for OIDC_AUDIENCE, with
  exp, iss, aud and sub present and valid.

Both are checked in the event loop, without a thread: a signature is CPU work
on cached keys, and an API key is one indexed read (core.reads, native on
PostgreSQL). PyJWT's own PyJWKClient fetches the JWKS with urllib, which would
block the loop; so the JWKS is fetched here with httpx's async client and parsed
with PyJWT's PyJWKSet.
"""

import asyncio
import datetime
import hashlib
import hmac
import json
import logging
import math
import re
import secrets
import time
from dataclasses import dataclass

import httpx
import jwt
from django.conf import settings

from core import reads
from core.models import ApiKey

logger = logging.getLogger(__name__)

API_KEY = re.compile(r"sk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
# Longer tokens are refused unread: no issuer signs a 8 KB access token.
MAX_TOKEN_CHARS = 8192
# Algorithms whose keys are public: a symmetric one (HS256) would let anyone who
# holds the JWKS sign tokens, and "none" signs nothing (core.checks refuses both).
ASYMMETRIC_ALGORITHMS = frozenset(
    {
        "RS256",
        "RS384",
        "RS512",
        "PS256",
        "PS384",
        "PS512",
        "ES256",
        "ES384",
        "ES512",
        "EdDSA",
    }
)


@dataclass(frozen=True)
class Principal:
    """Who a valid token speaks for."""

    kind: str  # "api_key" or "oidc"
    subject: str  # the API key's name, or the token's sub
    expires_at: float | None  # Unix time, or None for a key without expiry
    key_prefix: str | None = None  # an API key's, to check it again later


class Unauthorized(Exception):
    """No valid token: a 401 (RFC 6750), or a WebSocket closed with 4401."""

    def __init__(self, message: str, *, token_sent: bool = True):
        super().__init__(message)
        self.token_sent = token_sent

    def challenge(self) -> str:
        """The WWW-Authenticate header: the error only when a token was sent."""
        if not self.token_sent:
            return 'Bearer realm="api"'
        description = re.sub(r'["\\\x00-\x1f\x7f-\uffff]', "", str(self))[:200]
        return (
            'Bearer realm="api", error="invalid_token", '
            f'error_description="{description}"'
        )


class IssuerUnavailable(Exception):
    """The issuer's keys cannot be fetched, and none are cached: a 503, since the
    token itself may well be valid."""


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_api_key() -> tuple[str, str, str]:
    """(prefix, digest, token) of a new key; the token is shown once, never kept."""
    prefix = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    return prefix, digest(secret), f"sk_{prefix}_{secret}"


async def authenticate(authorization: str | None) -> Principal | None:
    """The principal of an Authorization header; None when there is none."""
    if authorization is None:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("send the token as: Authorization: Bearer <token>")
    return await verify(token)


async def verify(token: str) -> Principal:
    if len(token) > MAX_TOKEN_CHARS:
        raise Unauthorized("the token is too long")
    if match := API_KEY.fullmatch(token):
        return await _api_key(*match.groups())
    if settings.OIDC_ISSUER:
        return await _access_token(token)
    raise Unauthorized("the token is not an API key of this service")


async def still_valid(principal: Principal) -> bool:
    """Whether an API key is still neither revoked nor expired (a long-lived
    WebSocket asks again now and then); an access token is valid until its exp."""
    if principal.expires_at is not None and principal.expires_at <= time.time():
        return False
    if principal.key_prefix is None:
        return True
    rows = await reads.fetch(
        ApiKey.objects.filter(prefix=principal.key_prefix, revoked_at=None).values("id")
    )
    return bool(rows)


async def _api_key(prefix: str, secret: str) -> Principal:
    rows = await reads.fetch(
        ApiKey.objects.filter(prefix=prefix).values(
            "name", "digest", "expires_at", "revoked_at"
        )
    )
    # Compared whether or not the prefix exists: the answer takes the same time.
    stored = rows[0]["digest"] if rows else "0" * 64
    if not hmac.compare_digest(stored, digest(secret)) or not rows:
        raise Unauthorized("the API key is not valid")
    key = rows[0]
    if key["revoked_at"] is not None:
        raise Unauthorized("the API key is revoked")
    expires_at = key["expires_at"]
    if expires_at is not None and expires_at <= datetime.datetime.now(datetime.UTC):
        raise Unauthorized("the API key has expired")
    return Principal(
        "api_key",
        key["name"],
        None if expires_at is None else expires_at.timestamp(),
        prefix,
    )


async def _access_token(token: str) -> Principal:
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError:
        raise Unauthorized("the token is neither an API key nor a JWT") from None
    algorithm = header.get("alg")
    if algorithm not in settings.OIDC_ALGORITHMS:
        raise Unauthorized(
            f"the token's algorithm is not one of {settings.OIDC_ALGORITHMS}"
        )
    key_id = header.get("kid")
    if not isinstance(key_id, str):
        raise Unauthorized("the token names no signing key (kid)")
    key = await KEYS.key(key_id)
    try:
        claims = jwt.decode(
            token,
            # The JWK itself, not its key: PyJWT then verifies only with the
            # algorithm the issuer bound to that key, whatever the header says.
            key=key,
            algorithms=settings.OIDC_ALGORITHMS,
            audience=settings.OIDC_AUDIENCE,
            issuer=settings.OIDC_ISSUER,
            leeway=settings.OIDC_LEEWAY_SECONDS,
            options={"require": ["exp", "iss", "aud", "sub"]},
        )
    except jwt.ExpiredSignatureError:
        raise Unauthorized("the token has expired") from None
    except jwt.InvalidTokenError as exc:
        raise Unauthorized(f"the token is not valid: {exc}") from None
    return Principal("oidc", claims["sub"], float(claims["exp"]))


class SigningKeys:
    """The issuer's JWKS, by key id: fetched when first needed, again after
    OIDC_JWKS_MAX_AGE_SECONDS, and when a token names a key id it lacks, but at
    most once per OIDC_JWKS_REFETCH_SECONDS. Requests that need a fetch at the
    same time wait for the same one. When a fetch fails, the keys already known
    stay in use."""

    def __init__(self):
        self.keys: dict[str, jwt.PyJWK] = {}
        self.fetched_at = -math.inf  # time.monotonic() of the last good fetch
        self.tried_at = -math.inf  # ... of the last fetch, good or not
        self.fetching: asyncio.Task | None = None

    def forget(self) -> None:
        self.__init__()

    async def key(self, key_id: str) -> jwt.PyJWK:
        now = time.monotonic()
        stale = now - self.fetched_at > settings.OIDC_JWKS_MAX_AGE_SECONDS
        unknown = key_id not in self.keys
        may_fetch = now - self.tried_at >= settings.OIDC_JWKS_REFETCH_SECONDS
        if (stale or unknown) and (may_fetch or self._in_flight()):
            await self._refresh()
        if not self.keys:
            raise IssuerUnavailable("the issuer's signing keys could not be fetched")
        try:
            return self.keys[key_id]
        except KeyError:
            raise Unauthorized(
                "the token's signing key is not one of the issuer's"
            ) from None

    def _in_flight(self) -> bool:
        return self.fetching is not None and not self.fetching.done()

    async def _refresh(self) -> None:
        loop = asyncio.get_running_loop()
        if not self._in_flight() or self.fetching.get_loop() is not loop:
            self.tried_at = time.monotonic()
            self.fetching = loop.create_task(self._fetch())
        # Shielded: a client that leaves does not cancel the fetch for the others.
        await asyncio.shield(self.fetching)

    async def _fetch(self) -> None:
        try:
            async with httpx.AsyncClient(
                timeout=settings.OIDC_TIMEOUT_SECONDS, follow_redirects=False
            ) as client:
                url = settings.OIDC_JWKS_URL or (
                    await _json(client, _discovery_url())
                ).get("jwks_uri")
                if not isinstance(url, str):
                    raise ValueError("the discovery document has no jwks_uri")
                keyset = jwt.PyJWKSet.from_dict(await _json(client, url))
        except (httpx.HTTPError, ValueError, jwt.PyJWKSetError) as exc:
            logger.warning("the issuer's signing keys could not be fetched: %s", exc)
            return
        self.keys = {
            key.key_id: key
            for key in keyset.keys
            if key.key_id and key.public_key_use in (None, "sig")
        }
        self.fetched_at = time.monotonic()


def _discovery_url() -> str:
    return settings.OIDC_ISSUER.rstrip("/") + "/.well-known/openid-configuration"


async def _json(client: httpx.AsyncClient, url: str) -> dict:
    """A JSON object from url, read up to OIDC_JWKS_MAX_BYTES."""
    async with client.stream(
        "GET", url, headers={"Accept": "application/json"}
    ) as response:
        response.raise_for_status()
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > settings.OIDC_JWKS_MAX_BYTES:
                raise ValueError(
                    f"{url} sent more than {settings.OIDC_JWKS_MAX_BYTES} bytes"
                )
    document = json.loads(body)
    if not isinstance(document, dict):
        raise ValueError(f"{url} sent no JSON object")
    return document


KEYS = SigningKeys()
