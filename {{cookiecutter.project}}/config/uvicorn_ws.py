"""Uvicorn's WebSocket protocol (websockets' sans-I/O one) with four changes: the
service answers a handshake that is under way when the worker shuts down,
instead of Uvicorn's 500; an open WebSocket no longer keeps its handshake; the
client's messages wait in an Inbox (core.inbox), not an asyncio.Queue (3.1 KiB
less per idle WebSocket), as its flow control does on core.inbox's Event (0.6
KiB less); and the app finds that Inbox in its scope's extensions
(core.inbox.RECEIVE_QUEUE): its consumers have their channel's messages put in
it too, and wait on it alone (core.dispatch).

Uvicorn keeps the handshake's request and response, with their parsed headers,
for as long as the connection is open, though nothing reads them once the
response is sent (the app has its scope): 4.5 KiB of each idle WebSocket's
36 (measured with tracemalloc). They are dropped once the WebSocket is open, and
the request's headers emptied: websockets' parser, a generator that runs for the
whole connection, keeps the request in a local variable.

At shutdown Uvicorn answers every handshake the app has not answered yet with a
500, and fails every open WebSocket with 1012. The service's SIGTERM handler
holds Uvicorn's own until the handshakes under way are answered
(core.shutdown.held()), but a connection can still come in after that and
before Uvicorn stops accepting (up to a tick of its loop, 0.1 s): a recycled
worker under clients that reconnect gets some (tests/test_serve.py of the
platform template). Such a handshake is left to the app, which answers it and,
as the worker is stopping, tells the client when to reconnect and closes with
1001 (core.shutdown.close_on_stop()); Uvicorn waits for the connection to end
(its graceful timeout at most). No setting of Uvicorn or uvicorn-worker changes
this answer, so this subclass does. bin/serve (Uvicorn's --ws) and
config/gunicorn_worker_class.py name it.
"""

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from core.inbox import RECEIVE_QUEUE, Event, Inbox
from core.shutdown import HANDOVER_SECONDS


class ServiceWebSocketProtocol(WebSocketsSansIOProtocol):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.queue = Inbox()
        self.writable = Event()
        self.writable.set()

    def handle_connect(self, event) -> None:
        super().handle_connect(event)
        # Unless the handshake was refused: the app is about to run.
        if not self.handshake_complete:
            self.scope["extensions"][RECEIVE_QUEUE] = self.queue

    # Called by Uvicorn's Server.shutdown() for each connection, once it has
    # stopped accepting.
    def shutdown(self) -> None:
        if self.disconnected:
            return
        if not self.handshake_complete:
            # Once the app has answered, as for any open WebSocket: by then the
            # service has closed it (Uvicorn then only drops the connection), or,
            # for a WebSocket that is not told, Uvicorn closes it with 1012.
            self.loop.call_later(HANDOVER_SECONDS, self.shutdown)
            return
        super().shutdown()

    async def send(self, message) -> None:
        await super().send(message)
        if self.handshake_complete and self.response is not None:
            self.request.headers.clear()
            self.request = self.response = None
