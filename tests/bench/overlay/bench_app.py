"""Written by tests/bench into its copy of the service; config/asgi.py imports its
handler and connection counter from here instead of from core."""

import os

from core import connections, handler


def get_asgi_application():
    if os.environ.get("BENCH_STOCK") == "1":
        from django.core.asgi import get_asgi_application as stock

        return stock()
    application = handler.get_asgi_application()
    if os.environ.get("BENCH_POLL_CHECK") == "1":
        _check_by_poll()
    return application


def _check_by_poll():
    """The broadcast's workers hold 5,000 connections each; core.database.dropped
    asks select(), which refuses a file descriptor above 1023, so that a worker
    holding about 1,000 sockets checks out no database connection and answers
    every write 503 after the pool's timeout (tests/bench/notes.md). This asks
    poll(), which has no such bound, until the service does: remove it then."""
    import select

    from core import database

    def dropped(connection) -> bool:
        poller = select.poll()
        poller.register(connection.fileno(), select.POLLIN)
        return bool(poller.poll(0))

    database.dropped = dropped


def count_connections(application):
    if os.environ.get("BENCH_METRICS", "1") == "1":
        return connections.count_connections(application)
    return application
