"""The ASGI application as servers see it: lifespan and protocol routing."""

import pytest
from asgiref.testing import ApplicationCommunicator

from config.asgi import application
{%- if cookiecutter.tasks == "arq" %}
from core import queue
{%- endif %}


async def test_lifespan_starts_up_and_shuts_down():
    communicator = ApplicationCommunicator(
        application, {"type": "lifespan", "asgi": {"version": "3.0"}}
    )
    await communicator.send_input({"type": "lifespan.startup"})
    assert await communicator.receive_output(timeout=5) == {
        "type": "lifespan.startup.complete"
    }
{%- if cookiecutter.tasks == "arq" %}
    # What a request's enqueue opens on the worker's loop: arq's pool.
    pool = await queue._pool()
    await pool.ping()
{%- endif %}
    await communicator.send_input({"type": "lifespan.shutdown"})
    assert await communicator.receive_output(timeout=5) == {
        "type": "lifespan.shutdown.complete"
    }
    await communicator.wait(timeout=5)
{%- if cookiecutter.tasks == "arq" %}
    # Closed by the shutdown, not left to the garbage collector.
    connections = pool.connection_pool._available_connections
    assert connections, "the pool never connected"
    assert not [connection for connection in connections if connection.is_connected]
{%- endif %}


async def test_unknown_protocols_are_refused():
    communicator = ApplicationCommunicator(application, {"type": "smtp"})
    with pytest.raises(ValueError, match="smtp"):
        await communicator.wait(timeout=5)
