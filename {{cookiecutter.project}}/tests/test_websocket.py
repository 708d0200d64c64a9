"""The WebSocket consumer through the full ASGI stack: origin and session
checks, broadcasts from the API, direct messages, and message limits."""

import asyncio
import datetime
import io
import json
import logging
import sys
import time

import channels.consumer
import channels.layers
import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import AsyncClient
from django.utils import timezone
from prometheus_client import REGISTRY
from redis.exceptions import ConnectionError as RedisConnectionError

from config.asgi import application
from core import events
from core.inbox import RECEIVE_QUEUE, Inbox
from core.models import ApiKey
from core.websocket_sessions import sessions_when_sent
from tests import tokens

pytestmark = pytest.mark.django_db(transaction=True)

ORIGIN = (b"origin", b"https://{{ cookiecutter.domain }}")


class OneQueueCommunicator(WebsocketCommunicator):
    """A server that offers its receive queue, as the service's Uvicorn does
    (config/uvicorn_ws.py): the consumer waits on it alone (core.dispatch)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._input_queue = Inbox()
        self.scope["extensions"] = {RECEIVE_QUEUE: self._input_queue}

    async def send_input(self, message):
        if self.future.done():
            self.future.result()
        self.input_queue.put_nowait(message)


@pytest.fixture(autouse=True, params=["two receives", "one queue"])
def receiving(request, monkeypatch) -> str:
    """Every test of this module with Channels' own receives (Granian, or any
    server that offers no queue) and with one queue (Uvicorn)."""
    if request.param == "one queue":
        monkeypatch.setattr(
            sys.modules[__name__], "WebsocketCommunicator", OneQueueCommunicator
        )
    return request.param


async def connect(headers=(ORIGIN,)) -> tuple[WebsocketCommunicator, dict]:
    communicator = WebsocketCommunicator(
        application, "/ws/items", headers=list(headers)
    )
    connected, _ = await communicator.connect(timeout=5)
    assert connected
    welcome = await communicator.receive_json_from(timeout=5)
    assert welcome["type"] == "welcome"
    return communicator, welcome


async def signed_in(username: str) -> tuple[WebsocketCommunicator, dict]:
    user = await sync_to_async(get_user_model().objects.create_user)(
        username, password="pw"
    )
    client = AsyncClient()
    await client.aforce_login(user)
    cookie = f"sessionid={client.cookies['sessionid'].value}".encode()
    return await connect(headers=(ORIGIN, (b"cookie", cookie)))


async def test_only_a_connection_that_sends_the_session_cookie_loads_a_session():
    """core.websocket_sessions: Channels' session stack only for the cookie."""
    scopes = []

    async def inner(scope, receive, send):
        scopes.append(scope)

    application = sessions_when_sent(inner)
    websocket = {"type": "websocket", "path": "/ws/items"}
    for headers in ([], [(b"cookie", b"theme=dark")], [(b"x", b"sessionid=1")]):
        await application({**websocket, "headers": headers}, None, None)
    await application(
        {**websocket, "headers": [(b"cookie", b"theme=dark; sessionid=nope")]},
        None,
        None,
    )
    *without, sent = scopes
    for scope in without:
        assert "session" not in scope
        assert not scope["user"].is_authenticated
    # A session cookie that names no session: Channels' anonymous user.
    assert "session" in sent
    assert not await sync_to_async(lambda: sent["user"].is_authenticated)()


async def test_foreign_origin_is_refused():
    communicator = WebsocketCommunicator(
        application, "/ws/items", headers=[(b"origin", b"https://evil.example")]
    )
    connected, _ = await communicator.connect(timeout=5)
    assert not connected


@pytest.mark.parametrize(
    "origin", ["http://localhost", "http://localhost:8000", "http://127.0.0.1"]
)
async def test_a_page_on_the_clients_localhost_is_refused(origin, settings):
    """Although localhost is an allowed host in production (probes send it), a
    page served on a client's own machine is not this service's."""
    assert "localhost" in settings.ALLOWED_HOSTS
    assert not settings.DEBUG
    communicator = WebsocketCommunicator(
        application, "/ws/items", headers=[(b"origin", origin.encode())]
    )
    connected, _ = await communicator.connect(timeout=5)
    assert not connected


async def test_missing_origin_is_refused():
    communicator = WebsocketCommunicator(application, "/ws/items")
    connected, _ = await communicator.connect(timeout=5)
    assert not connected


async def test_anonymous_connection_gets_item_broadcasts(item_payload):
    first, welcome = await connect()
    second, _ = await connect()
    assert welcome["user"] is None

    response = await tokens.async_client().post(
        "/api/items", item_payload, content_type="application/json"
    )
    for communicator in (first, second):
        message = await communicator.receive_json_from(timeout=5)
        assert message == {
            "type": "event",
            "id": message["id"],
            "event": "item.created",
            "data": response.json(),
        }
        assert events.EVENT_ID.fullmatch(message["id"])
        await communicator.disconnect()


async def test_messages_that_read_no_database_skip_channels_thread_hop(
    monkeypatch, item_payload
):
    """Channels closes stale database connections in a thread before each
    message a consumer handles; a broadcast, a direct message and a received
    message read no database, so they skip it. Connecting does not."""
    hops = []

    async def close_old_connections():
        hops.append(1)

    monkeypatch.setattr(
        channels.consumer, "aclose_old_connections", close_old_connections
    )
    sender, _ = await signed_in("alice")
    receiver, welcome = await signed_in("bob")
    connected = len(hops)
    assert connected == 2
    await events.publish("items", "item.deleted", {"id": 1})
    for communicator in (sender, receiver):
        assert (await next_event(communicator))["data"] == {"id": 1}
    await sender.send_json_to({"type": "ping"})
    assert await sender.receive_json_from(timeout=5) == {"type": "pong"}
    to = welcome["connection"]
    await sender.send_json_to({"type": "direct", "to": to, "text": "hi"})
    assert (await sender.receive_json_from(timeout=5))["type"] == "sent"
    assert (await receiver.receive_json_from(timeout=5))["text"] == "hi"
    assert len(hops) == connected
    for communicator in (sender, receiver):
        await communicator.disconnect()


async def next_event(communicator: WebsocketCommunicator) -> dict:
    message = await communicator.receive_json_from(timeout=5)
    assert message["type"] == "event", message
    return message


async def test_a_connection_that_reconnects_with_last_event_id_misses_nothing(
    monkeypatch,
):
    """As an event stream with Last-Event-ID: a client that comes back with the
    last id it got gets the events published while it was away, once each (one
    published while they are read comes both ways), then live ones."""
    communicator, _ = await connect()
    await events.publish("items", "item.deleted", {"id": 1})
    first = await next_event(communicator)
    await communicator.disconnect()

    await events.publish("items", "item.deleted", {"id": 2})
    replay = events.replay

    async def replay_while_one_is_published(group, after):
        # In the group already: this one is both broadcast and replayed.
        await events.publish("items", "item.deleted", {"id": 3})
        return await replay(group, after)

    monkeypatch.setattr(events, "replay", replay_while_one_is_published)
    communicator = WebsocketCommunicator(
        application, f"/ws/items?last_event_id={first['id']}", headers=[ORIGIN]
    )
    assert (await communicator.connect(timeout=5))[0]
    assert (await communicator.receive_json_from(timeout=5))["type"] == "welcome"
    missed = [await next_event(communicator) for _ in range(2)]
    assert [event["data"]["id"] for event in missed] == [2, 3]
    await events.publish("items", "item.deleted", {"id": 4})
    assert (await next_event(communicator))["data"] == {"id": 4}
    assert await communicator.receive_nothing(timeout=0.2)
    await communicator.disconnect()


@pytest.mark.parametrize("last_event_id", ["x", "1-2-3", "9" * 30 + "-0"])
async def test_a_last_event_id_not_of_this_api_closes_with_4400(last_event_id):
    communicator = WebsocketCommunicator(
        application, f"/ws/items?last_event_id={last_event_id}", headers=[ORIGIN]
    )
    assert (await communicator.connect(timeout=5))[0]
    assert await communicator.receive_output(timeout=5) == {
        "type": "websocket.close",
        "code": 4400,
    }


async def test_a_client_gone_while_sent_to_ends_its_connection_quietly(caplog):
    """Sending to a client that has gone raises an OSError (the ASGI spec's;
    Uvicorn's ClientDisconnected): the channel layer did not fail, and there is
    nothing to close."""
    sent = []

    async def send(message):
        if message["type"] == "websocket.send":
            raise ConnectionResetError("the client has gone")
        sent.append(message)

    received = asyncio.Queue()
    received.put_nowait({"type": "websocket.connect"})
    scope = WebsocketCommunicator(application, "/ws/items", headers=[ORIGIN]).scope
    with caplog.at_level(logging.INFO):
        await asyncio.wait_for(application(scope, received.get, send), timeout=5)
    assert [message["type"] for message in sent] == ["websocket.accept"]
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warned == []


async def test_idle_connection_still_gets_broadcasts(item_payload):
    communicator, _ = await connect()
    # Longer than redis-py's default socket timeout (5 s), which the channel
    # layer's blocking reads must not be subject to.
    await asyncio.sleep(6)
    await tokens.async_client().post(
        "/api/items", item_payload, content_type="application/json"
    )
    message = await communicator.receive_json_from(timeout=5)
    assert message["event"] == "item.created"
    await communicator.disconnect()


async def test_a_connection_waits_on_one_queue_where_the_server_offers_it(
    receiving, item_payload
):
    """Three idle connections: with the server's queue offered, no task of
    their own beside the app's; with Channels' receives, two more each."""
    before = len(asyncio.all_tasks())
    communicators = [(await connect())[0] for _ in range(3)]
    await asyncio.sleep(0.1)
    tasks = len(asyncio.all_tasks()) - before
    # The Redis layer's one reader of the worker's channels, once for all.
    reader = 1 if settings.REDIS_URL else 0
    assert tasks == (3 if receiving == "one queue" else 9) + reader
    await tokens.async_client().post(
        "/api/items", item_payload, content_type="application/json"
    )
    for communicator in communicators:
        message = await communicator.receive_json_from(timeout=5)
        assert message["event"] == "item.created"
        await communicator.disconnect()


async def test_a_connection_whose_layer_fails_later_closes_with_1013(
    receiving, monkeypatch
):
    """Redis lost after the connection opened: Channels' receive of its channel
    raises, or the Redis layer's reader hands its delivery the error."""
    layer = channels.layers.get_channel_layer()
    failing = asyncio.Event()

    async def failed_receive(channel):
        await failing.wait()
        raise RedisConnectionError("gone")

    monkeypatch.setattr(layer, "receive", failed_receive)
    communicator, welcome = await connect()
    if receiving == "one queue":
        layer.deliveries[welcome["connection"]].fail(RedisConnectionError("gone"))
    else:
        failing.set()
    assert await communicator.receive_output(timeout=5) == {
        "type": "websocket.close",
        "code": 1013,
    }
    await communicator.wait(timeout=5)
    assert welcome["connection"] not in getattr(layer, "deliveries", {})


async def test_ping_pong():
    communicator, _ = await connect()
    await communicator.send_json_to({"type": "ping"})
    assert await communicator.receive_json_from(timeout=5) == {"type": "pong"}
    await communicator.disconnect()


async def test_signed_in_users_message_one_connection():
    alice, alice_welcome = await signed_in("alice")
    bob, bob_welcome = await signed_in("bob")
    carol, _ = await connect()
    assert alice_welcome["user"] == "alice"

    await alice.send_json_to(
        {"type": "direct", "to": bob_welcome["connection"], "text": "hi bob"}
    )
    assert await alice.receive_json_from(timeout=5) == {
        "type": "sent",
        "to": bob_welcome["connection"],
    }
    assert await bob.receive_json_from(timeout=5) == {
        "type": "direct",
        "from": alice_welcome["connection"],
        "user": "alice",
        "text": "hi bob",
    }
    assert await carol.receive_nothing(timeout=0.2)
    for communicator in (alice, bob, carol):
        await communicator.disconnect()


async def test_anonymous_users_cannot_send_direct_messages():
    anonymous, _ = await connect()
    target, target_welcome = await connect()
    await anonymous.send_json_to(
        {"type": "direct", "to": target_welcome["connection"], "text": "spam"}
    )
    reply = await anonymous.receive_json_from(timeout=5)
    assert reply["error"] == "unauthenticated"
    assert await target.receive_nothing(timeout=0.2)
    for communicator in (anonymous, target):
        await communicator.disconnect()


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ('{"type": "direct", "to": "items", "text": "x"}', "unknown_connection"),
        ('{"type": "direct", "to": 5, "text": "x"}', "invalid_message"),
        ('{"type": "shout"}', "unknown_type"),
        ("[1, 2]", "invalid_message"),
        ("{not json", "invalid_json"),
    ],
)
async def test_bad_messages_get_an_error_and_keep_the_connection(message, error):
    communicator, _ = await signed_in("dave")
    await communicator.send_to(text_data=message)
    assert (await communicator.receive_json_from(timeout=5))["error"] == error
    await communicator.send_json_to({"type": "ping"})
    assert await communicator.receive_json_from(timeout=5) == {"type": "pong"}
    await communicator.disconnect()


async def test_oversized_message_closes_with_1009(settings):
    settings.WEBSOCKET_MAX_MESSAGE_BYTES = 100
    communicator, _ = await connect()
    await communicator.send_to(text_data='{"type": "ping", "pad": "' + "x" * 200 + '"}')
    assert await communicator.receive_output(timeout=5) == {
        "type": "websocket.close",
        "code": 1009,
    }


async def test_binary_message_closes_with_1003():
    communicator, _ = await connect()
    await communicator.send_to(bytes_data=b"\x00\x01")
    assert await communicator.receive_output(timeout=5) == {
        "type": "websocket.close",
        "code": 1003,
    }


async def test_connections_messages_and_close_codes_are_counted(settings):
    def sample(name, **labels):
        return REGISTRY.get_sample_value(name, labels) or 0.0

    connects = sample("django_websocket_connects_total")
    incoming = sample("django_websocket_messages_total", direction="in")
    outgoing = sample("django_websocket_messages_total", direction="out")
    normal = sample("django_websocket_disconnects_total", code_class="normal")
    too_big = sample("django_websocket_disconnects_total", code_class="too_big")

    communicator, _ = await connect()
    assert sample("django_connections_active", type="websocket") == 1
    await communicator.send_json_to({"type": "ping"})
    await communicator.receive_json_from(timeout=5)
    await communicator.disconnect(code=1000)
    assert sample("django_connections_active", type="websocket") == 0
    assert sample("django_websocket_connects_total") == connects + 1
    assert sample("django_websocket_messages_total", direction="in") == incoming + 1
    # The welcome and the pong.
    assert sample("django_websocket_messages_total", direction="out") == outgoing + 2
    assert (
        sample("django_websocket_disconnects_total", code_class="normal") == normal + 1
    )

    settings.WEBSOCKET_MAX_MESSAGE_BYTES = 100
    communicator, _ = await connect()
    await communicator.send_to(text_data="x" * 101)
    assert (await communicator.receive_output(timeout=5))["code"] == 1009
    await communicator.disconnect(code=1006)  # the code the app closed with counts
    assert (
        sample("django_websocket_disconnects_total", code_class="too_big")
        == too_big + 1
    )


async def test_a_full_worker_denies_the_handshake_until_one_leaves(settings):
    settings.WEBSOCKET_MAX_CONNECTIONS = 1
    kind = {"type": "websocket"}
    refused_before = REGISTRY.get_sample_value("django_connections_refused_total", kind)
    first, _ = await connect()
    refused = WebsocketCommunicator(application, "/ws/items", headers=[ORIGIN])
    connected, _ = await refused.connect(timeout=5)
    assert not connected
    assert (
        REGISTRY.get_sample_value("django_connections_refused_total", kind)
        == refused_before + 1
    )
    await first.disconnect()

    again, _ = await connect()
    await again.disconnect()


async def test_a_full_worker_answers_503_where_the_server_lets_it(settings):
    """With the ASGI "websocket.http.response" extension (Uvicorn's), the handshake
    a full worker refuses gets the 503 an event stream gets, with Retry-After."""
    settings.WEBSOCKET_MAX_CONNECTIONS = 1
    first, _ = await connect()
    refused = WebsocketCommunicator(application, "/ws/items", headers=[ORIGIN])
    refused.scope["extensions"] = {"websocket.http.response": {}}
    await refused.send_input({"type": "websocket.connect"})
    start = await refused.receive_output(timeout=5)
    assert start["type"] == "websocket.http.response.start"
    assert start["status"] == 503
    headers = dict(start["headers"])
    assert headers[b"Retry-After"] == b"1"
    assert headers[b"Content-Type"] == b"application/json"
    body = await refused.receive_output(timeout=5)
    assert body["type"] == "websocket.http.response.body"
    assert json.loads(body["body"])["error"] == "too_many_connections"
    await refused.send_input({"type": "websocket.disconnect", "code": 1006})
    await refused.wait(timeout=5)
    await first.disconnect()


async def test_a_connection_is_closed_at_its_maximum_lifetime(settings):
    """Past WEBSOCKET_MAX_SECONDS (none here) the server closes with 4000: the
    client reconnects at once."""
    settings.WEBSOCKET_MAX_SECONDS = 0
    communicator, _ = await connect()
    closed = await communicator.receive_output(timeout=5)
    assert closed == {"type": "websocket.close", "code": 4000}
    await communicator.disconnect()


# Bearer tokens (core.auth): the same as the API's, in a header or, from a
# browser, in the subprotocols.


async def with_token(token: str, *, subprotocol: bool = False):
    """A connection that sends token; (connected, welcome or close message)."""
    if subprotocol:
        communicator = WebsocketCommunicator(
            application, "/ws/items", headers=[ORIGIN], subprotocols=["bearer", token]
        )
    else:
        authorization = (b"authorization", f"Bearer {token}".encode())
        communicator = WebsocketCommunicator(
            application, "/ws/items", headers=[ORIGIN, authorization]
        )
    connected, subprotocol_chosen = await communicator.connect(timeout=5)
    return communicator, connected, subprotocol_chosen


@pytest.mark.parametrize("subprotocol", [False, True], ids=["header", "subprotocol"])
async def test_a_token_names_the_connection_and_lets_it_send_direct_messages(
    subprotocol,
):
    communicator, connected, chosen = await with_token(
        tokens.TOKEN, subprotocol=subprotocol
    )
    assert connected
    assert chosen == ("bearer" if subprotocol else None)
    welcome = await communicator.receive_json_from(timeout=5)
    assert welcome["user"] == "tests"
    await communicator.send_json_to(
        {"type": "direct", "to": welcome["connection"], "text": "hi"}
    )
    assert (await communicator.receive_json_from(timeout=5))["type"] in (
        "sent",
        "direct",
    )
    await communicator.disconnect()


@pytest.mark.parametrize("subprotocol", [False, True], ids=["header", "subprotocol"])
async def test_a_token_that_is_not_valid_closes_with_4401(subprotocol):
    communicator, connected, _ = await with_token(
        "sk_0123456789ab_" + "x" * 43, subprotocol=subprotocol
    )
    assert connected  # accepted only to say why it closes
    assert await communicator.receive_output(timeout=5) == {
        "type": "websocket.close",
        "code": 4401,
    }


async def test_with_api_auth_reads_a_connection_needs_a_token(settings):
    settings.API_AUTH_READS = True
    communicator = WebsocketCommunicator(application, "/ws/items", headers=[ORIGIN])
    connected, _ = await communicator.connect(timeout=5)
    assert connected
    assert (await communicator.receive_output(timeout=5))["code"] == 4401
    communicator, _, _ = await with_token(tokens.TOKEN)
    assert (await communicator.receive_json_from(timeout=5))["type"] == "welcome"
    await communicator.disconnect()


async def test_a_revoked_key_closes_its_connection(settings):
    settings.WEBSOCKET_TOKEN_CHECK_SECONDS = 0.2
    communicator, _, _ = await with_token(tokens.TOKEN)
    assert (await communicator.receive_json_from(timeout=5))["type"] == "welcome"
    await asyncio.sleep(0.5)
    assert await communicator.receive_nothing(timeout=0.1)  # still valid: still open
    await sync_to_async(call_command)(
        "revoke_api_key", tokens.PREFIX, stdout=io.StringIO()
    )
    assert await communicator.receive_output(timeout=5) == {
        "type": "websocket.close",
        "code": 4401,
    }


async def test_a_key_that_expires_closes_its_connection_then(settings):
    settings.WEBSOCKET_TOKEN_CHECK_SECONDS = 3600
    await ApiKey.objects.filter(prefix=tokens.PREFIX).aupdate(
        expires_at=timezone.now() + datetime.timedelta(seconds=1)
    )
    communicator, _, _ = await with_token(tokens.TOKEN)
    assert (await communicator.receive_json_from(timeout=5))["type"] == "welcome"
    assert await communicator.receive_output(timeout=5) == {
        "type": "websocket.close",
        "code": 4401,
    }


async def test_an_access_token_that_expires_closes_its_connection_then(
    issuer, settings
):
    """An OIDC access token is valid until its exp (core.auth): the connection it
    opened stays open until then, and is closed then."""
    settings.WEBSOCKET_TOKEN_CHECK_SECONDS = 3600
    token = issuer.token(exp=int(time.time()) + 3)
    communicator, connected, _ = await with_token(token)
    assert connected
    assert (await communicator.receive_json_from(timeout=5))["type"] == "welcome"
    assert await communicator.receive_nothing(timeout=1)
    assert await communicator.receive_output(timeout=5) == {
        "type": "websocket.close",
        "code": 4401,
    }
