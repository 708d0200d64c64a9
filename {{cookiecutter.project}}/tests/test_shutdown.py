"""On SIGTERM the service goes first: WebSockets close with 1001, event streams
end cleanly, each told when to reconnect, and readiness turns 503, before the
server's own handler runs."""

import asyncio
{%- if cookiecutter.websockets == "yes" and cookiecutter.server != "granian" %}
import json
{%- endif %}
import os
import signal
{%- if cookiecutter.websockets == "yes" and cookiecutter.server != "granian" %}
import socket
{%- endif %}

import pytest
{%- if cookiecutter.websockets == "yes" %}
from channels.testing import WebsocketCommunicator
{%- endif %}
{%- if cookiecutter.websockets == "yes" and cookiecutter.server != "granian" %}
from uvicorn import Config, Server
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
{%- endif %}

from config.asgi import application
{%- if cookiecutter.websockets == "yes" and cookiecutter.server != "granian" %}
from config.uvicorn_ws import ServiceWebSocketProtocol
{%- endif %}
from core import {% if cookiecutter.websockets == "yes" %}auth, {% endif %}shutdown
from tests.asgi import next_chunk, open_stream

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
async def server_handler(monkeypatch):
    """Stands in for the server's own SIGTERM handler, as if at lifespan startup."""
    calls = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: calls.append(signum))
    monkeypatch.setattr(shutdown, "_stopped", None)
    monkeypatch.setattr(shutdown, "_waiting", set())
    monkeypatch.setattr(shutdown, "_closing", set())
    shutdown.install()
    yield calls
    signal.signal(signal.SIGTERM, previous)


def sigterm():
    os.kill(os.getpid(), signal.SIGTERM)


async def eventually(condition, seconds: float = 5) -> bool:
    for _ in range(int(seconds / 0.01)):
        if condition():
            return True
        await asyncio.sleep(0.01)
    return condition()


async def test_readiness_turns_503_and_the_server_handler_still_runs(
    async_client, server_handler
):
    assert (await async_client.get("/readyz")).status_code == 200
    sigterm()
    await shutdown.stopped()
    response = await async_client.get("/readyz")
    assert (response.status_code, response.json()["status"]) == (503, "stopping")
    assert await eventually(lambda: server_handler == [signal.SIGTERM])


async def test_the_server_handler_waits_for_the_closes_then_runs(server_handler):
    """Uvicorn fails open WebSockets with 1012 once its handler has run: the
    service's closes (1001) go first."""
    release = asyncio.Event()
    shutdown.close_on_stop(release.wait)
    sigterm()
    await shutdown.stopped()
    await asyncio.sleep(0.2)
    assert server_handler == []
    release.set()
    assert await eventually(lambda: server_handler == [signal.SIGTERM])


@pytest.fixture
async def loop_server_handler(monkeypatch):
    """Stands in for a server that stops on SIGTERM and SIGINT alike, with a
    handler on the event loop, as Granian's workers do."""
    calls = []
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, calls.append, signum)
    monkeypatch.setattr(shutdown, "_stopped", None)
    monkeypatch.setattr(shutdown, "_waiting", set())
    monkeypatch.setattr(shutdown, "_closing", set())
    shutdown.install()
    yield calls
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(signum)


async def test_a_servers_handler_on_the_event_loop_waits_for_the_closes_too(
    loop_server_handler,
):
    """The loop would run the server's handler as soon as SIGTERM comes, beside
    the service's: Granian then dropped WebSockets whose 1001 was on its way."""
    release = asyncio.Event()
    shutdown.close_on_stop(release.wait)
    sigterm()
    await shutdown.stopped()
    await asyncio.sleep(0.2)
    assert loop_server_handler == []
    release.set()
    assert await eventually(lambda: loop_server_handler == [signal.SIGINT])


async def test_a_close_that_never_ends_holds_the_server_back_a_bounded_time(
    server_handler, monkeypatch
):
    monkeypatch.setattr(shutdown, "HANDOVER_SECONDS", 0.3)
    never = shutdown.close_on_stop(asyncio.Event().wait)
    sigterm()
    assert await eventually(lambda: server_handler == [signal.SIGTERM], seconds=2)
    never.cancel()


def reconnect_delay(milliseconds: int, spread_seconds: float) -> int:
    """The delay, checked to be within the range core.shutdown gives."""
    assert 1000 <= milliseconds <= spread_seconds * 1000
    return milliseconds


async def test_event_streams_end_with_a_reconnect_delay(server_handler, settings):
    """EventSource waits the last `retry` it got before it reconnects: each
    stream gets its own, so that they do not all come back at once. A stream
    ends at once, not at its next keep-alive."""
    settings.RECONNECT_SPREAD_SECONDS = 60
    settings.SSE_KEEPALIVE_SECONDS = 60
    delays, streams = set(), []
    for _ in range(2):
        communicator, _ = await open_stream(application, "/api/items/events")
        await next_chunk(communicator)
        streams.append(communicator)
    sigterm()
    for communicator in streams:
        chunks = []
        while (message := await communicator.receive_output(timeout=5)).get(
            "more_body"
        ):
            chunks.append(message["body"])
        await communicator.wait(timeout=5)
        said = [chunk for chunk in chunks if chunk not in (b"", b": keep-alive\n\n")]
        *before, last = said
        assert before == []
        field, _, value = last.decode().rstrip("\n").partition(": ")
        assert field == "retry"
        delays.add(reconnect_delay(int(value), 60))
    assert len(delays) == 2
{%- if cookiecutter.websockets == "yes" %}


async def test_websockets_are_told_when_to_reconnect_then_close_with_going_away(
    server_handler, settings
):
    settings.RECONNECT_SPREAD_SECONDS = 60
    communicators = []
    for _ in range(2):
        communicator = WebsocketCommunicator(
            application,
            "/ws/items",
            headers=[(b"origin", b"https://{{ cookiecutter.domain }}")],
        )
        assert (await communicator.connect(timeout=5))[0]
        await communicator.receive_json_from(timeout=5)
        communicators.append(communicator)
    sigterm()
    delays = set()
    for communicator in communicators:
        told = await communicator.receive_json_from(timeout=5)
        assert told.keys() == {"type", "retry_ms"}
        assert told["type"] == "reconnect"
        delays.add(reconnect_delay(told["retry_ms"], 60))
        assert await communicator.receive_output(timeout=5) == {
            "type": "websocket.close",
            "code": 1001,
        }
    assert len(delays) == 2


@pytest.fixture
def authentication_held(monkeypatch):
    """A handshake waits in its authentication until `release` is set; `reached`
    is set once one got there."""
    reached, release = asyncio.Event(), asyncio.Event()
    authenticate = auth.authenticate

    async def slow_authenticate(authorization):
        reached.set()
        await release.wait()
        return await authenticate(authorization)

    monkeypatch.setattr(auth, "authenticate", slow_authenticate)
    return reached, release


async def test_a_handshake_under_way_is_answered_before_the_server_handler_runs(
    server_handler, settings, authentication_held
):
    """Uvicorn answers a handshake still open when its handler runs with a 500:
    the service answers it first, and tells that client when to reconnect too."""
    settings.RECONNECT_SPREAD_SECONDS = 60
    reached, release = authentication_held
    communicator = WebsocketCommunicator(
        application,
        "/ws/items",
        headers=[(b"origin", b"https://{{ cookiecutter.domain }}")],
    )
    connecting = asyncio.create_task(communicator.connect(timeout=5))
    await asyncio.wait_for(reached.wait(), timeout=5)
    sigterm()
    await shutdown.stopped()
    await asyncio.sleep(0.2)
    assert server_handler == []
    release.set()
    assert (await connecting)[0]
    assert (await communicator.receive_json_from(timeout=5))["type"] == "welcome"
    told = await communicator.receive_json_from(timeout=5)
    assert told["type"] == "reconnect"
    reconnect_delay(told["retry_ms"], 60)
    assert await communicator.receive_output(timeout=5) == {
        "type": "websocket.close",
        "code": 1001,
    }
    assert await eventually(lambda: server_handler == [signal.SIGTERM])
{%- if cookiecutter.server != "granian" %}


async def test_a_handshake_that_comes_after_the_handover_is_answered_too(
    server_handler, settings, authentication_held
):
    """A connection that comes in once the server's handler has run, before
    Uvicorn stops accepting: Uvicorn would answer it 500 when it shuts its
    connections down; its protocol (config/uvicorn_ws.py) leaves it to the
    service, which tells that client when to reconnect like the others."""
    settings.RECONNECT_SPREAD_SECONDS = 60
    reached, release = authentication_held
    sigterm()
    assert await eventually(lambda: server_handler == [signal.SIGTERM])
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        config = Config(
            application, ws=ServiceWebSocketProtocol, lifespan="off", log_config=None
        )
        server = Server(config)
        serving = asyncio.create_task(server.serve(sockets=[listening]))
        assert await eventually(lambda: server.started)
        port = listening.getsockname()[1]
        opening = connect(
            f"ws://127.0.0.1:{port}/ws/items",
            origin="https://{{ cookiecutter.domain }}",
            open_timeout=10,
        )
        connecting = asyncio.ensure_future(opening)
        await asyncio.wait_for(reached.wait(), timeout=5)
        server.should_exit = True
        # Stopped accepting, then told each connection to shut down: at once.
        assert await eventually(lambda: not server.servers[0].is_serving())
        release.set()
        async with await connecting as websocket:
            assert json.loads(await websocket.recv())["type"] == "welcome"
            told = json.loads(await websocket.recv())
            assert told["type"] == "reconnect"
            reconnect_delay(told["retry_ms"], 60)
            with pytest.raises(ConnectionClosed) as closed:
                await websocket.recv()
        assert closed.value.rcvd.code == 1001
        await asyncio.wait_for(serving, timeout=10)
{%- endif %}
{%- endif %}
