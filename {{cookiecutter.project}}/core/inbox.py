"""What an idle connection waits on, without asyncio's memory while nothing
comes: a queue of incoming messages (Inbox) and an Event.

Each idle WebSocket waits on two queues, Uvicorn's of the client's messages and
the channel layer's of its channel's, and each event stream on the second. An
asyncio.Queue allocates four deques when it is made (its items, its getters,
its putters, and its join() event's waiters): 3.2 KiB, whether or not a message
ever comes, of an idle WebSocket's 28 (tracemalloc, tests/bench of the platform
template). An Inbox holds a list of its waiters; its buffer is made by the
first message and let go by the last one read.

Only the part of the interface Uvicorn's WebSocket protocol and the two channel
layers use (config/uvicorn_ws.py, core/layers.py): put_nowait, get, get_nowait,
empty, full, qsize; no join(), task_done() or shutdown(). asyncio has no queue
that allocates lazily, and janus, the usual other one, adds a thread-safe side
to a deque; the waiting below is asyncio.Queue's own.

A server that keeps a connection's messages in an Inbox may offer it to the
app in the scope's extensions, under RECEIVE_QUEUE (config/uvicorn_ws.py): a
consumer then has its channel's messages put in the same queue, and waits on
that one alone (core.dispatch).

Likewise an asyncio.Event allocates a deque for its waiters (0.6 KiB), and
Uvicorn gives every connection one or two, for flow control and for the
request's body (config/uvicorn_http.py, config/uvicorn_ws.py).
"""

import asyncio
from collections import deque

# The scope extension under which a server offers the Inbox its receive() reads.
RECEIVE_QUEUE = "service.receive_queue"


class Inbox:
    # `_queue` is asyncio.Queue's name for its buffer: channels' in-memory layer
    # reads the oldest message's expiry through it.
    __slots__ = ("_getters", "_queue", "drop_oldest", "maxsize")

    def __init__(self, maxsize: int = 0, drop_oldest: bool = False):
        """With `maxsize`, a full inbox refuses a message (asyncio.QueueFull), or,
        with `drop_oldest`, drops its oldest one to take it."""
        self.maxsize = maxsize
        self.drop_oldest = drop_oldest
        self._queue: deque | None = None
        self._getters: list[asyncio.Future] = []

    def qsize(self) -> int:
        return len(self._queue) if self._queue else 0

    def empty(self) -> bool:
        return not self._queue

    def full(self) -> bool:
        return 0 < self.maxsize <= self.qsize()

    def put_nowait(self, item) -> None:
        if self.full():
            if not self.drop_oldest:
                raise asyncio.QueueFull
            self.get_nowait()
        if self._queue is None:
            self._queue = deque()
        self._queue.append(item)
        self._wake_next()

    def get_nowait(self):
        if not self._queue:
            raise asyncio.QueueEmpty
        item = self._queue.popleft()
        if not self._queue:
            self._queue = None
        return item

    async def get(self):
        while not self._queue:
            getter = asyncio.get_running_loop().create_future()
            self._getters.append(getter)
            try:
                await getter
            except BaseException:
                getter.cancel()
                if getter in self._getters:
                    self._getters.remove(getter)
                # Woken for a message, then cancelled: the next getter takes it.
                if self._queue and not getter.cancelled():
                    self._wake_next()
                raise
        return self.get_nowait()

    def waited_on(self) -> bool:
        """Whether a get is waiting for a message."""
        return any(not getter.done() for getter in self._getters)

    def _wake_next(self) -> None:
        while self._getters:
            getter = self._getters.pop(0)
            if not getter.done():
                getter.set_result(None)
                return


class Failed:
    """What a reader that failed puts in an Inbox for the get waiting on it: its
    caller raises `error` (core.events' group reader, core.layers' Redis one)."""

    def __init__(self, error: BaseException):
        self.error = error


class Event(asyncio.Event):
    """asyncio.Event with its waiters in a list: asyncio.Event's code, which only
    appends, iterates and removes them, is unchanged."""

    def __init__(self):
        super().__init__()
        self._waiters = []
