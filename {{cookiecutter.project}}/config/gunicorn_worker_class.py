"""The worker class Gunicorn runs its web server processes with: uvicorn-worker's
UvicornWorker with this service's Uvicorn settings.

Gunicorn hands Uvicorn the bind, keep-alive, backlog, worker recycling and
trusted proxies from its own flags (bin/serve); the settings below have no
Gunicorn flag, and uvicorn-worker applies CONFIG_KWARGS last.
"""

import os

from uvicorn_worker import UvicornWorker


class ServiceUvicornWorker(UvicornWorker):
    CONFIG_KWARGS = {
        "loop": "uvloop",
        "http": "httptools",
        "lifespan": "on",
        "server_header": False,
        "timeout_graceful_shutdown": int(os.environ.get("GRACEFUL_TIMEOUT", "30")),
{%- if cookiecutter.websockets == "yes" %}
        "ws": "websockets-sansio",
        "ws_max_size": int(os.environ.get("WEBSOCKET_MAX_MESSAGE_BYTES", "16384")),
        "ws_ping_interval": float(os.environ.get("WEBSOCKET_PING_INTERVAL", "20")),
        "ws_per_message_deflate": False,
{%- else %}
        "ws": "none",
{%- endif %}
    }
