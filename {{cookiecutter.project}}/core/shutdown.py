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

_stopping: asyncio.Event | None = None
# What close_on_stop() runs; each task leaves the set when done or cancelled.
_closing: set[asyncio.Task] = set()
# The task that hands the signal on to the server, kept so that it is not collected.
_handover: asyncio.Task | None = None


def install() -> None:
    """Chains a SIGTERM handler before the server's; called at lifespan startup, in
    each worker, once the server has installed its own."""
    global _stopping
    loop = asyncio.get_running_loop()
    _stopping = asyncio.Event()

    async def stop(signum, frame):
        _stopping.set()
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
    return _stopping is not None and _stopping.is_set()


async def stopped() -> None:
    """Returns when the server is stopping; never, where install() did not run."""
    if _stopping is None:
        await asyncio.Future()
    await _stopping.wait()


def reconnect_delay_ms() -> int:
    """How long a client of this stopping worker waits before it reconnects: at
    least a second, by when this worker no longer accepts connections (its
    server's handler has run), and at most RECONNECT_SPREAD_SECONDS."""
    spread = max(1.0, settings.RECONNECT_SPREAD_SECONDS)
    # Spreads reconnections out; nothing here is a secret.
    return round(1000 * random.uniform(1.0, spread))  # noqa: S311


def close_on_stop(close: Callable[[], Awaitable]) -> asyncio.Task:
    """Runs `close` once the server is told to stop, and holds the server's own
    shutdown until it is done (HANDOVER_SECONDS at most). Cancel the task when the
    connection ends first."""

    async def when_stopped():
        await stopped()
        await close()

    task = asyncio.create_task(when_stopped())
    _closing.add(task)
    task.add_done_callback(_closing.discard)
    return task
{%- if cookiecutter.websockets == "yes" %}


# What ends a WebSocket's handshake: the application accepted or denied it.
_ANSWERS = frozenset(
    {"websocket.accept", "websocket.close", "websocket.http.response.start"}
)


def answering_handshakes_first(application):
    """ASGI middleware for WebSockets: a handshake under way when the server is
    told to stop holds the server's own shutdown until the application has
    answered it (HANDOVER_SECONDS at most), so that the connection is accepted
    and told when to reconnect like the others. Uvicorn answers a handshake still
    open when its handler runs with a 500 (a worker recycled under clients that
    reconnect: tests/test_serve.py of the platform template)."""

    async def answering(scope, receive, send):
        loop = asyncio.get_running_loop()
        answered = loop.create_future()
        _closing.add(answered)

        def done() -> None:
            _closing.discard(answered)
            if not answered.done():
                answered.set_result(None)

        async def answering_send(message):
            await send(message)
            # Before the application goes on: it adds its close_on_stop() then,
            # and stop() must find that before this handshake leaves the set.
            if message["type"] in _ANSWERS:
                done()

        try:
            await application(scope, receive, answering_send)
        finally:
            done()

    return answering
{%- endif %}
