"""Lets long-lived connections end well when the server is told to stop.

On SIGTERM the servers stop accepting and wait for open requests until their
graceful timeout, then cut what is left. WebSockets they close themselves with
1012 (Uvicorn) or by dropping the connection (Granian); event streams never end
on their own. This module lets the service go first: WebSocket clients get 1001
(going away), event streams end with their last chunk, and readiness turns 503,
so that clients reconnect elsewhere; the server's own handler runs once the
WebSockets are closed{% if cookiecutter.websockets == "yes" %} and the handshakes under way answered{% endif %}.
Each client is told when to reconnect (reconnect_delay_ms): a deploy or a
recycled worker (core.recycling) sends its clients back to the other workers
spread out, not all at once.
"""

import asyncio
{%- if cookiecutter.websockets == "yes" %}
import contextlib
{%- endif %}
import os
import random
import signal
from collections.abc import Awaitable, Callable

from django.conf import settings

# How long the server's own SIGTERM handler waits for the service's WebSockets to
# close with 1001: Uvicorn fails every WebSocket still open with 1012 within one tick
# of its loop (0.1 s) once its handler has run, and a close can need a round trip
# (the channel layer, the client's answer). Bounded, so that a client that never
# answers cannot hold the shutdown back.
HANDOVER_SECONDS = 2.0

# Done once the server is told to stop. Not for connections to wait on: each
# wait adds a callback to it and removing one scans them all, which cost a core
# with 20,000 idle event streams. They register with close_on_stop() instead.
_stopped: asyncio.Future | None = None
# The closes close_on_stop() runs once the server is told to stop: a callable
# each, not a task waiting, which an idle connection would hold for its life.
_waiting: set["OnStop"] = set()
# What the handover waits for: the closes under way (each task leaves the set
# when done or cancelled){% if cookiecutter.websockets == "yes" %}, and the handshakes held (held()){% endif %}.
_closing: set[asyncio.Future] = set()
# The task that hands the signal on to the server, kept so that it is not collected.
_handover: asyncio.Task | None = None


def install() -> None:
    """Chains a SIGTERM handler before the server's; called at lifespan startup, in
    each worker, once the server has installed its own."""
    global _stopped
    loop = asyncio.get_running_loop()
    _stopped = loop.create_future()

    async def stop(signum, frame):
        if not _stopped.done():
            _stopped.set_result(None)
        for waiting in list(_waiting):
            waiting.start()
        # Until nothing is left to close: what is added meanwhile counts too.
        deadline = loop.time() + HANDOVER_SECONDS
        while _closing and (left := deadline - loop.time()) > 0:
            await asyncio.wait(set(_closing), timeout=left)
        to_server(signum, frame)

    def begin(signum, frame):
        global _handover
        _handover = loop.create_task(stop(signum, frame))

    if loop.remove_signal_handler(signal.SIGTERM):
        # The server set its handler on the event loop (Granian's workers, the
        # same for SIGTERM and SIGINT). The loop runs such a handler as soon as
        # the signal comes, through its wakeup file descriptor, beside any
        # handler signal.signal() sets: Granian then dropped the WebSockets
        # while their 1001 was on its way. So the loop runs ours instead, and
        # the server gets SIGINT, its other stop signal, once the closes are done.
        def to_server(signum, frame):
            os.kill(os.getpid(), signal.SIGINT)

        loop.add_signal_handler(signal.SIGTERM, begin, signal.SIGTERM, None)
        return

    # Uvicorn's and Gunicorn's workers: a handler of signal.signal(), kept to be
    # called once the closes are done.
    server_handler = signal.getsignal(signal.SIGTERM)

    def to_server(signum, frame):
        if callable(server_handler):
            server_handler(signum, frame)
        elif server_handler == signal.SIG_DFL:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    def on_sigterm(signum, frame):
        loop.call_soon_threadsafe(begin, signum, frame)

    signal.signal(signal.SIGTERM, on_sigterm)


def is_stopping() -> bool:
    return _stopped is not None and _stopped.done()


async def stopped() -> None:
    """Returns when the server is stopping; never, where install() did not run."""
    if _stopped is None:
        await asyncio.Future()
    await asyncio.shield(_stopped)


def reconnect_delay_ms() -> int:
    """How long a client of this stopping worker waits before it reconnects: at
    least a second, by when this worker no longer accepts connections (its
    server's handler has run), and at most RECONNECT_SPREAD_SECONDS."""
    spread = max(1.0, settings.RECONNECT_SPREAD_SECONDS)
    # Spreads reconnections out; nothing here is a secret.
    return round(1000 * random.uniform(1.0, spread))  # noqa: S311


class OnStop:
    """A close that close_on_stop() runs once the server is told to stop."""

    __slots__ = ("close", "task")

    def __init__(self, close: Callable[[], Awaitable]):
        self.close = close
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        _waiting.discard(self)
        self.task = asyncio.ensure_future(self.close())
        _closing.add(self.task)
        self.task.add_done_callback(_closing.discard)

    def cancel(self) -> None:
        """The connection ended first: the close is not run, or is stopped."""
        _waiting.discard(self)
        if self.task is not None:
            self.task.cancel()


def close_on_stop(close: Callable[[], Awaitable]) -> OnStop:
    """Runs `close` once the server is told to stop (at once, if it is stopping),
    and holds the server's own shutdown until it is done (HANDOVER_SECONDS at
    most). Cancel it when the connection ends first."""
    on_stop = OnStop(close)
    if is_stopping():
        on_stop.start()
    else:
        _waiting.add(on_stop)
    return on_stop
{%- if cookiecutter.websockets == "yes" %}


@contextlib.asynccontextmanager
async def held():
    """Holds the server's own shutdown until the block ends (HANDOVER_SECONDS at
    most): for a WebSocket's handshake, which Uvicorn answers with a 500 if it is
    still under way when its handler runs (a worker recycled under clients that
    reconnect: tests/test_serve.py of the platform template). Answered, the
    connection is told when to reconnect like the others."""
    handshake = asyncio.get_running_loop().create_future()
    _closing.add(handshake)
    try:
        yield
    finally:
        # After the block: a connection accepted in it has added its close.
        _closing.discard(handshake)
        handshake.set_result(None)
{%- endif %}
