"""WebSocket: live item changes for every client, direct messages between users.

Every connection joins the items group and receives each change broadcast by the
API, with its event id. A client that reconnects with `?last_event_id=<id>`
first gets the events it missed, of the last SSE_REPLAY_EVENTS (core.events), as
an event stream does with Last-Event-ID; an id this API did not send closes the
connection with 4400. A caller with a bearer token (or a signed-in user) can
also send a message to one other connection, named by the id it was given on
connecting. Messages are JSON objects with a "type".

The token (core.auth) comes in `Authorization: Bearer <token>`, or, from a
browser, which cannot set that header, as the subprotocols `bearer, <token>`
(the server then selects "bearer"). A token that is not valid closes the
connection with 4401, and so does none when API_AUTH_READS is set. An API key
revoked later closes it within WEBSOCKET_TOKEN_CHECK_SECONDS, and a token
that expires closes it when it expires.

A worker holds at most WEBSOCKET_MAX_CONNECTIONS (core.connections): one more is
answered before it is accepted, as an event stream is, with a 503, Retry-After
and {"error": "too_many_connections"}, by the ASGI "websocket.http.response"
extension (Uvicorn, Gunicorn's Uvicorn workers and Granian have it); a server
without it gets the handshake denied, which it answers with a bare 403.
Each connection is closed with 4000 after WEBSOCKET_MAX_SECONDS, before
channels_redis's group_expiry silently drops it from the group. When its worker
stops (a deploy, or recycling), it gets {"type": "reconnect", "retry_ms": N} and
is closed with 1001: the client reconnects after N ms, with the id of the last
event it got (core.shutdown).
"""

import asyncio
import json
import logging
import time
from urllib.parse import parse_qs

from channels.consumer import get_handler_name
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from core import auth, events, shutdown
from core.api import unavailable
from core.connections import WEBSOCKETS
from core.dispatch import OneQueueConsumer
from core.events import LAYER_ERRORS
from core.handler import encoded_headers
from items.changes import EVENTS_GROUP

# Close codes (RFC 6455, and 1013 of the IANA registry).
GOING_AWAY = 1001
UNSUPPORTED_DATA = 1003
MESSAGE_TOO_BIG = 1009
TRY_AGAIN_LATER = 1013
# Private codes (4000-4999). The connection reached WEBSOCKET_MAX_SECONDS, and
# the client reconnects at once:
LIFETIME_REACHED = 4000
# Its last_event_id is not an event id (HTTP's 400).
INVALID_REQUEST = 4400
# Its token is not valid, or no longer (HTTP's 401): reconnect with a new one.
TOKEN_NOT_VALID = 4401
# The ASGI extension by which the application answers a handshake with an HTTP
# response of its own, in a server that has it (the scope's "extensions").
DENIAL_RESPONSE = "websocket.http.response"

logger = logging.getLogger(__name__)


def authorization_of(scope: dict) -> tuple[str | None, str | None]:
    """A WebSocket's Authorization header, or the one its subprotocols
    `bearer, <token>` stand for; and the subprotocol to accept ("bearer" then)."""
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            return value.decode("latin-1"), None
    offered = scope.get("subprotocols") or []
    if len(offered) == 2 and offered[0] == "bearer":
        return f"Bearer {offered[1]}", "bearer"
    return None, None


def last_event_id_of(scope: dict) -> str | None:
    """The `last_event_id` of a WebSocket's query string (a browser cannot set a
    Last-Event-ID header on one)."""
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    values = query.get("last_event_id")
    return values[-1] if values else None


class ItemsConsumer(OneQueueConsumer, AsyncJsonWebsocketConsumer):
    groups = [EVENTS_GROUP]
    # Messages whose handlers read no database. Channels' dispatch hops to a
    # thread before every message to close stale database connections: a third
    # of a broadcast's CPU with 5,000 WebSockets in a worker (tests/bench of the
    # platform template). Connecting, which authenticates, still does.
    WITHOUT_DATABASE = frozenset(
        {events.MESSAGE_TYPE, "direct.message", "websocket.receive"}
    )

    async def dispatch(self, message):
        if message["type"] in self.WITHOUT_DATABASE:
            await getattr(self, get_handler_name(message))(message)
            return
        await super().dispatch(message)

    async def websocket_connect(self, message):
        # A stop that comes meanwhile waits for the answer (shutdown.held).
        async with shutdown.held():
            await super().websocket_connect(message)

    async def __call__(self, scope, receive, send):
        """A channel layer that fails (Redis down), on connecting or later, closes
        the connection with 1013, Try Again Later: a client that kept it open
        would miss events without knowing. A client that has gone is not one of
        these: sending to it raises an OSError too (the ASGI spec's), and there is
        nothing left to tell it."""

        async def sending(message):
            try:
                await send(message)
            except OSError:
                self._client_gone = True
                raise

        try:
            await super().__call__(scope, receive, sending)
        except LAYER_ERRORS:
            if self._close_on_shutdown is not None:
                self._close_on_shutdown.cancel()
            if self._client_gone:
                return
            logger.warning("WebSocket closed: the channel layer failed", exc_info=True)
            if self.accepted:
                await send({"type": "websocket.close", "code": TRY_AGAIN_LATER})
            else:
                # Accepted only to be closed with the code that says why.
                await send({"type": "websocket.accept"})
                await send({"type": "websocket.close", "code": TRY_AGAIN_LATER})
        finally:
            if self._slot is not None:
                self._slot.give_back()
            # Whatever ended the connection: nothing of it is left to run.
            for pending in (self._close_on_shutdown, self._lifetime, self._token_watch):
                if pending is not None:
                    pending.cancel()

    _close_on_shutdown = None
    _client_gone = False
    _slot = None
    _lifetime = None
    _token_watch = None
    accepted = False
    principal = None
    # The id of the last event replayed on connecting: a broadcast up to it was
    # sent already (event ids grow in the order they are recorded).
    _replayed_up_to = None

    async def connect(self) -> None:
        authorization, subprotocol = authorization_of(self.scope)
        last_event_id = last_event_id_of(self.scope)
        if last_event_id is not None and not events.EVENT_ID.fullmatch(last_event_id):
            await self._refuse(INVALID_REQUEST, subprotocol)
            return
        try:
            self.principal = await auth.authenticate(authorization)
        except auth.Unauthorized:
            await self._refuse(TOKEN_NOT_VALID, subprotocol)
            return
        except auth.IssuerUnavailable:
            await self._refuse(TRY_AGAIN_LATER, subprotocol)
            return
        if (
            self.principal is None
            and settings.API_AUTH_READS
            and not self.scope["user"].is_authenticated
        ):
            await self._refuse(TOKEN_NOT_VALID, subprotocol)
            return
        self._slot = WEBSOCKETS.take()
        if self._slot is None:
            await self._full()
            return
        await self.accept(subprotocol)
        self.accepted = True
        # Once accepted, as it sends a message before it closes: a stop that came
        # meanwhile closes the connection at once.
        self._close_on_shutdown = shutdown.close_on_stop(self._going_away)
        # A timer, not a task sleeping: an idle connection holds less.
        self._lifetime = asyncio.get_running_loop().call_later(
            settings.WEBSOCKET_MAX_SECONDS, self._expire
        )
        if self.principal is not None:
            self._token_watch = asyncio.create_task(self._watch_token())
        await self.send_json(
            {"type": "welcome", "connection": self.channel_name, "user": self._who()}
        )
        if last_event_id is not None:
            # Read once in the group (Channels joins it before connect()): an
            # event published meanwhile comes both ways, and is sent once.
            for event in await events.replay(EVENTS_GROUP, last_event_id):
                await self._send_event(event)
                self._replayed_up_to = event["id"]

    def _who(self) -> str | None:
        """The token's subject, or the signed-in user's name."""
        if self.principal is not None:
            return self.principal.subject
        user = self.scope["user"]
        return user.get_username() if user.is_authenticated else None

    async def _full(self) -> None:
        """Answers the handshake of a connection the worker has no room for."""
        if DENIAL_RESPONSE not in (self.scope.get("extensions") or {}):
            await self.close()  # before accept: the handshake is denied
            return
        response = unavailable(
            "too_many_connections",
            f"this worker holds {settings.WEBSOCKET_MAX_CONNECTIONS} WebSockets, retry",
        ).response()
        # The ASGI send: the consumer's own send() sends WebSocket messages.
        await self.base_send(
            {
                "type": "websocket.http.response.start",
                "status": response.status_code,
                "headers": encoded_headers(response),
            }
        )
        await self.base_send(
            {"type": "websocket.http.response.body", "body": response.content}
        )

    async def _refuse(self, code: int, subprotocol: str | None) -> None:
        # Accepted only to be closed with the code that says why (a denied
        # handshake is a bare 403 to the client).
        await self.accept(subprotocol)
        await self.close(code=code)

    async def _watch_token(self) -> None:
        while True:
            wait = settings.WEBSOCKET_TOKEN_CHECK_SECONDS
            if self.principal.expires_at is not None:
                wait = min(wait, max(0.0, self.principal.expires_at - time.time()))
            await asyncio.sleep(wait)
            try:
                valid = await auth.still_valid(self.principal)
            except Exception:
                # The database is down for a moment: the connection keeps its
                # token until the next check can tell.
                logger.warning("WebSocket token not checked again", exc_info=True)
                continue
            if not valid:
                await self.close(code=TOKEN_NOT_VALID)
                return

    async def disconnect(self, code) -> None:
        if self._close_on_shutdown is not None:
            self._close_on_shutdown.cancel()

    async def _going_away(self) -> None:
        await self.send_json(
            {"type": "reconnect", "retry_ms": shutdown.reconnect_delay_ms()}
        )
        await self.close(code=GOING_AWAY)

    def _expire(self) -> None:
        self._lifetime = asyncio.ensure_future(self.close(code=LIFETIME_REACHED))

    async def receive(self, text_data=None, bytes_data=None, **kwargs) -> None:
        if text_data is None:
            await self.close(code=UNSUPPORTED_DATA)
            return
        if len(text_data.encode()) > settings.WEBSOCKET_MAX_MESSAGE_BYTES:
            await self.close(code=MESSAGE_TOO_BIG)
            return
        try:
            content = json.loads(text_data)
        except ValueError:
            await self._error("invalid_json", "messages must be JSON")
            return
        if not isinstance(content, dict):
            await self._error("invalid_message", "messages must be JSON objects")
            return
        await self.receive_json(content)

    async def receive_json(self, content: dict, **kwargs) -> None:
        kind = content.get("type")
        if kind == "ping":
            await self.send_json({"type": "pong"})
        elif kind == "direct":
            await self._direct(content.get("to"), content.get("text"))
        else:
            await self._error("unknown_type", "type must be 'ping' or 'direct'")

    async def _direct(self, to, text) -> None:
        sender = self._who()
        if sender is None:
            await self._error(
                "unauthenticated", "connect with a token to send direct messages"
            )
            return
        if not isinstance(text, str) or not isinstance(to, str):
            await self._error("invalid_message", "'to' and 'text' must be strings")
            return
        # Only a connection's own channel (the id sent in "welcome") is a target.
        try:
            self.channel_layer.require_valid_channel_name(to)
        except TypeError:
            to = ""
        if "!" not in to:
            await self._error("unknown_connection", "'to' is not a connection id")
            return
        await self.channel_layer.send(
            to,
            {
                "type": "direct.message",
                "from": self.channel_name,
                "user": sender,
                "text": text,
            },
        )
        await self.send_json({"type": "sent", "to": to})

    async def direct_message(self, message: dict) -> None:
        await self.send_json(
            {
                "type": "direct",
                "from": message["from"],
                "user": message["user"],
                "text": message["text"],
            }
        )

    async def events_broadcast(self, message: dict) -> None:
        """Receives what core.events.publish sends to the group."""
        replayed = self._replayed_up_to
        if replayed and events.order(message["id"]) <= events.order(replayed):
            return
        await self._send_event(message)

    async def _send_event(self, event: dict) -> None:
        await self.send_json(
            {
                "type": "event",
                "id": event["id"],
                "event": event["event"],
                "data": event["data"],
            }
        )

    async def _error(self, code: str, message: str) -> None:
        await self.send_json({"type": "error", "error": code, "message": message})
