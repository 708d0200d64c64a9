"""Lets long-lived connections end well when the server is told to stop.

On SIGTERM the servers stop accepting and wait for open requests until their
graceful timeout, then cut what is left. WebSockets they close themselves with
1012 (Uvicorn) or by dropping the connection (Granian); event streams never end
on their own. This module lets the service go first: WebSocket clients get 1001
(going away), event streams end with their last chunk, and readiness turns 503,
so that clients reconnect elsewhere at once.
"""

import asyncio
import os
import signal

_stopping: asyncio.Event | None = None


def install() -> None:
    """Chains a SIGTERM handler before the server's; called at lifespan startup, in
    each worker, once the server has installed its own."""
    global _stopping
    loop = asyncio.get_running_loop()
    _stopping = asyncio.Event()
    server_handler = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum, frame):
        loop.call_soon_threadsafe(_stopping.set)
        if callable(server_handler):
            server_handler(signum, frame)
        elif server_handler == signal.SIG_DFL:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    signal.signal(signal.SIGTERM, on_sigterm)


def is_stopping() -> bool:
    return _stopping is not None and _stopping.is_set()


async def stopped() -> None:
    """Returns when the server is stopping; never, where install() did not run."""
    if _stopping is None:
        await asyncio.Future()
    await _stopping.wait()
