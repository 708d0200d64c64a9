import asyncio
import threading

import pytest
from asgiref.sync import sync_to_async
from channels.layers import channel_layers
from django.core.cache import cache
from django.db import connections
from django.db.models import FETCH_RAISE

from core import auth, handler, health, reads
from core import cache as cache_backends
from tests import tokens
from tests.issuer import AUDIENCE, Issuer
from tests.otlp import Receiver


@pytest.fixture(scope="session", autouse=True)
async def asyncio_clients_closed(django_db_setup):
    """The database pools and Redis clients of the test session's event loop are
    closed with it, before the test database is dropped; so are the connections
    the kept request threads hold (core.handler), as at lifespan shutdown, and
    that of the thread that runs writes called outside a request (a test's setup)."""
    yield
    await reads.close()
    await cache_backends.close()
    await health.close()
    await asyncio.to_thread(handler.close_connections)
    await sync_to_async(connections.close_all)()


@pytest.fixture(autouse=True)
def lazy_loads_raise(monkeypatch):
    """Every queryset of a test raises on a lazy load of a related object (Django
    6.1's FETCH_RAISE mode): in async code such a load would be a hidden query
    (SynchronousOnlyOperation), and in a write's thread an extra round trip."""
    monkeypatch.setattr("django.db.models.query.DEFAULT_FETCH_MODE", FETCH_RAISE)


@pytest.fixture(autouse=True)
async def fresh_channel_layer_and_cache():
    """No group or cached item outlives its test: ids repeat once rolled back."""
    yield
    for layer in channel_layers.backends.values():
        await layer.flush()
    channel_layers.backends.clear()
    await cache.aclear()


@pytest.fixture(autouse=True)
def api_key_of_the_tests(request):
    """The API key of tests.tokens, in the database of each test that has one."""
    if request.node.get_closest_marker("django_db") is not None:
        request.getfixturevalue("db")  # the marker's kind of database access
        tokens.create()


@pytest.fixture
async def fresh_pools():
    """This test's settings of core.reads' pools take effect: the pools are made
    anew, and again after the test with the suite's settings."""
    await reads.close()
    yield
    await reads.close()


@pytest.fixture
def async_client():
    """pytest-django's, sending the tests' API key."""
    return tokens.async_client()


@pytest.fixture
def item_payload():
    return {
        "name": "Widget",
        "category": "tools",
        "price": "12.50",
        "quantity": 3,
        "tags": ["blue", "small"],
    }


@pytest.fixture
def receiver():
    """An OTLP/HTTP trace receiver on 127.0.0.1 (tests.otlp), for the processes a
    test starts."""
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def issuer(settings):
    """A local OIDC issuer (tests.issuer) that the service trusts."""
    server = Issuer()
    # A short poll: shutdown() waits for it.
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    settings.OIDC_ISSUER = server.url
    settings.OIDC_AUDIENCE = AUDIENCE
    auth.KEYS.forget()
    yield server
    auth.KEYS.forget()
    server.shutdown()
    server.server_close()


def pytest_report_header(config):
    from django.conf import settings

    vendor = settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1]
    layer = settings.CHANNEL_LAYERS["default"]["BACKEND"].rsplit(".", 1)[-1]
    return f"database: {vendor.replace('sqlite3', 'sqlite')}, channel layer: {layer}"
