"""Written by tests/bench into its copy of the service; config/asgi.py imports its
handler and connection counter from here instead of from core."""

import os

from core import connections, handler


def get_asgi_application():
    if os.environ.get("BENCH_STOCK") == "1":
        from django.core.asgi import get_asgi_application as stock

        return stock()
    return handler.get_asgi_application()


def count_connections(application):
    if os.environ.get("BENCH_METRICS", "1") == "1":
        return connections.count_connections(application)
    return application
