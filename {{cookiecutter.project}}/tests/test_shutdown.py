"""On SIGTERM the service goes first: WebSockets close with 1001, event streams
end cleanly, and readiness turns 503, before the server's own handler runs."""

import os
import signal

import pytest
{%- if cookiecutter.websockets == "yes" %}
from channels.testing import WebsocketCommunicator
{%- endif %}

from config.asgi import application
from core import shutdown
from tests.asgi import next_chunk, open_stream

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
async def server_handler(monkeypatch):
    """Stands in for the server's own SIGTERM handler, as if at lifespan startup."""
    calls = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: calls.append(signum))
    monkeypatch.setattr(shutdown, "_stopping", None)
    shutdown.install()
    yield calls
    signal.signal(signal.SIGTERM, previous)


def sigterm():
    os.kill(os.getpid(), signal.SIGTERM)


async def test_readiness_turns_503_and_the_server_handler_still_runs(
    async_client, server_handler
):
    assert (await async_client.get("/readyz")).status_code == 200
    sigterm()
    await shutdown.stopped()
    response = await async_client.get("/readyz")
    assert (response.status_code, response.json()["status"]) == (503, "stopping")
    assert server_handler == [signal.SIGTERM]


async def test_event_streams_end_with_their_last_chunk(server_handler):
    communicator, _ = await open_stream(application, "/api/items/events")
    await next_chunk(communicator)
    sigterm()
    while (message := await communicator.receive_output(timeout=5)).get("more_body"):
        assert message["body"] in (b"", b": keep-alive\n\n")
    await communicator.wait(timeout=5)
{%- if cookiecutter.websockets == "yes" %}


async def test_websockets_close_with_going_away(server_handler):
    communicator = WebsocketCommunicator(
        application, "/ws/items", headers=[(b"origin", b"http://localhost")]
    )
    assert (await communicator.connect(timeout=5))[0]
    await communicator.receive_json_from(timeout=5)
    sigterm()
    assert await communicator.receive_output(timeout=5) == {
        "type": "websocket.close",
        "code": 1001,
    }
{%- endif %}
