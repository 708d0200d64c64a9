import pytest
from channels.layers import channel_layers


@pytest.fixture(autouse=True)
async def fresh_channel_layer():
    """Each test starts with an empty channel layer: no group outlives its test."""
    yield
    for layer in channel_layers.backends.values():
        await layer.flush()
    channel_layers.backends.clear()


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
