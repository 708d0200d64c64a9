"""The worker class Gunicorn runs its web server processes with: uvicorn-worker's
UvicornWorker with this service's Uvicorn settings.

Gunicorn hands Uvicorn the bind, keep-alive, backlog, worker recycling and
trusted proxies from its own flags (bin/serve); the settings below have no
Gunicorn flag, and uvicorn-worker applies CONFIG_KWARGS last. The HTTP protocol
is httptools' with a JSON 400 for requests it cannot parse (config/uvicorn_http.py){% if cookiecutter.websockets == "yes" %};
the WebSocket one lets the service answer a handshake under way at shutdown
(config/uvicorn_ws.py){% endif %}.
"""

import faulthandler
import logging
import os

from uvicorn_worker import UvicornWorker

from config.uvicorn_http import ServiceHttpToolsProtocol
{%- if cookiecutter.websockets == "yes" %}
from config.uvicorn_ws import ServiceWebSocketProtocol
{%- endif %}


class ServiceUvicornWorker(UvicornWorker):
    CONFIG_KWARGS = {
        # The service writes its own access line (core.middleware), as bin/serve
        # tells Uvicorn and Granian (--no-access-log). Uvicorn's default is on:
        # under Gunicorn it made a log record for every response, which
        # uvicorn.access, given gunicorn.access's handlers (none), dropped.
        "access_log": False,
        "loop": "uvloop",
        "http": ServiceHttpToolsProtocol,
        "lifespan": "on",
        "server_header": False,
        "timeout_graceful_shutdown": int(os.environ.get("GRACEFUL_TIMEOUT", "30")),
{%- if cookiecutter.websockets == "yes" %}
        "ws": ServiceWebSocketProtocol,
        "ws_max_size": int(os.environ.get("WEBSOCKET_MAX_MESSAGE_BYTES", "16384")),
        "ws_ping_interval": float(os.environ.get("WEBSOCKET_PING_INTERVAL", "20")),
        "ws_per_message_deflate": False,
{%- else %}
        "ws": "none",
{%- endif %}
    }

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # UvicornWorker gives Uvicorn's logger the handlers of gunicorn.error and
        # stops it propagating. config/logging.json leaves gunicorn.error none (it
        # propagates to the root's JSON handler), so Uvicorn's warnings would go
        # to Python's last-resort handler: plain text on stderr. They propagate
        # to the root's JSON handler instead, as Gunicorn's own do.
        uvicorn_error = logging.getLogger("uvicorn.error")
        uvicorn_error.handlers = []
        uvicorn_error.propagate = True

    def init_signals(self) -> None:
        super().init_signals()
        # uvicorn-worker resets SIGABRT, with Gunicorn's other signals, to the
        # default action, which ends the process without a word; it also undoes
        # PYTHONFAULTHANDLER. Gunicorn's arbiter sends SIGABRT to a worker whose
        # event loop missed its heartbeat for --timeout: faulthandler writes where
        # each thread was stuck to stderr first, then the worker dies as before.
        # faulthandler still counts itself enabled: enable() alone would do
        # nothing.
        faulthandler.disable()
        faulthandler.enable(all_threads=True)
