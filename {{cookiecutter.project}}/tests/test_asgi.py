"""The ASGI application as servers see it: lifespan and protocol routing."""

import pytest
from asgiref.testing import ApplicationCommunicator

from config.asgi import application


async def test_lifespan_starts_up_and_shuts_down():
    communicator = ApplicationCommunicator(
        application, {"type": "lifespan", "asgi": {"version": "3.0"}}
    )
    await communicator.send_input({"type": "lifespan.startup"})
    assert await communicator.receive_output(timeout=5) == {
        "type": "lifespan.startup.complete"
    }
    await communicator.send_input({"type": "lifespan.shutdown"})
    assert await communicator.receive_output(timeout=5) == {
        "type": "lifespan.shutdown.complete"
    }
    await communicator.wait(timeout=5)


async def test_unknown_protocols_are_refused():
    communicator = ApplicationCommunicator(application, {"type": "smtp"})
    with pytest.raises(ValueError, match="smtp"):
        await communicator.wait(timeout=5)
