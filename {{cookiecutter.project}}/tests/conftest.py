import pytest
from channels.layers import channel_layers
from django.core.cache import cache


@pytest.fixture(autouse=True)
async def fresh_channel_layer_and_cache():
    """No group or cached item outlives its test: ids repeat once rolled back."""
    yield
    for layer in channel_layers.backends.values():
        await layer.flush()
    channel_layers.backends.clear()
    await cache.aclear()


@pytest.fixture
def item_payload():
    return {
        "name": "Widget",
        "category": "tools",
        "price": "12.50",
        "quantity": 3,
        "tags": ["blue", "small"],
    }


def pytest_report_header(config):
    from django.conf import settings

    vendor = settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1]
    layer = settings.CHANNEL_LAYERS["default"]["BACKEND"].rsplit(".", 1)[-1]
    return f"database: {vendor.replace('sqlite3', 'sqlite')}, channel layer: {layer}"
