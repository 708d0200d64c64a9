"""The API key that the tests' requests send: conftest gives each test's database
its row, and tests.asgi and the async_client fixture send it unless told not to."""

from django.test import AsyncClient

from core.auth import digest

PREFIX = "0123456789ab"
SECRET = "t" * 43
TOKEN = f"sk_{PREFIX}_{SECRET}"
HEADERS = {"Authorization": f"Bearer {TOKEN}"}


def create(name: str = "tests") -> None:
    from core.models import ApiKey

    ApiKey.objects.create(name=name, prefix=PREFIX, digest=digest(SECRET))


def async_client(**options) -> AsyncClient:
    """Django's AsyncClient that sends TOKEN. Not AsyncClient(headers=...): it
    keeps those under their WSGI names (HTTP_AUTHORIZATION), which its ASGI
    requests then send as an "http-authorization" header."""
    return AsyncClient(AUTHORIZATION=HEADERS["Authorization"], **options)
