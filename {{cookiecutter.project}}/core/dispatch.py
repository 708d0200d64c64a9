"""Consumers that wait on one queue: their client's messages and their channel's.

Channels' consumers wait on two receives at once, the server's (the client's
messages) and the channel layer's (the consumer's channel: group events, direct
messages), each in a task of its own, with an asyncio.wait over both: 3 KiB of
each idle WebSocket's 22 (tracemalloc, tests/bench of the platform template).
Where the server offers the queue its receive() reads (core.inbox's
RECEIVE_QUEUE: this service's Uvicorn protocol, config/uvicorn_ws.py), the
layer delivers the consumer's channel into that queue (core.layers), and the
consumer reads it alone, in its own task. Elsewhere (Granian, Channels' test
communicators) it is Channels' consumer as it is.

Messages keep their types: a client's are "websocket.*"; the channel's are
the layer's, counted back to the layer as they are read.
"""

from channels.exceptions import StopConsumer
from channels.layers import get_channel_layer

from core.inbox import RECEIVE_QUEUE
from core.layers import LAYER_FAILED


class OneQueueConsumer:
    """Before an AsyncConsumer in the bases: its __call__ when it can."""

    async def __call__(self, scope, receive, send):
        queue = scope.get("extensions", {}).get(RECEIVE_QUEUE)
        layer = get_channel_layer(self.channel_layer_alias)
        if queue is None or not hasattr(layer, "deliver"):
            await super().__call__(scope, receive, send)
            return
        # What AsyncConsumer.__call__ sets, but its channel's receive.
        self.scope = scope
        self.channel_layer = layer
        self.channel_name = await layer.new_channel()
        self.base_send = send
        delivery = layer.deliver(self.channel_name, queue)
        try:
            while True:
                message = await receive()
                if not message["type"].startswith("websocket."):
                    delivery.taken()
                    if message["type"] == LAYER_FAILED:
                        raise message["error"]
                await self.dispatch(message)
        except StopConsumer:
            pass
        finally:
            layer.stop_delivery(self.channel_name)
