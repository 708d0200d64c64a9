"""The ASGI application every server runs: HTTP, {% if cookiecutter.websockets == "yes" %}WebSocket {% endif %}and lifespan."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

from core.handler import get_asgi_application

# Django must be set up before anything that imports models (ruff: E402 allowed).
http_application = get_asgi_application()

{% if cookiecutter.websockets == "yes" -%}
from channels.routing import ProtocolTypeRouter, URLRouter
from channels.security.websocket import OriginValidator
from django.conf import settings
{%- else -%}
from channels.routing import ProtocolTypeRouter
{%- endif %}
{%- if cookiecutter.server == "granian" %}
from granian.utils.proxies import wrap_asgi_with_proxy_headers
{%- endif %}

from core.connections import count_connections
from core.lifespan import lifespan
from core.tracing import wrap as traced
{%- if cookiecutter.websockets == "yes" %}
from core.websocket_sessions import sessions_when_sent
from items.routing import websocket_urlpatterns
{%- endif %}

# Outermost: connections are counted whatever the layers inside do with them.
application = count_connections(
    ProtocolTypeRouter(
        {
            # Unwrapped when tracing is off (core.tracing).
            "http": traced(http_application),
{%- if cookiecutter.websockets == "yes" %}
            # Browsers send Origin; refusing foreign origins stops cross-site
            # WebSocket hijacking of a signed-in user's session.
            "websocket": traced(
                OriginValidator(
                    sessions_when_sent(URLRouter(websocket_urlpatterns)),
                    settings.WEBSOCKET_ALLOWED_ORIGINS,
                ),
                websocket_routes=websocket_urlpatterns,
            ),
{%- endif %}
            "lifespan": lifespan,
        }
    )
)
{%- if cookiecutter.server == "granian" %}

# Granian has no flag for it: X-Forwarded-For and -Proto count only when they come
# from these proxies (the Nginx in front).
_behind_proxy = wrap_asgi_with_proxy_headers(
    application, trusted_hosts=os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")
)


async def _trusting_proxy_headers(scope, receive, send):
    # A coroutine function, so that every caller sees an ASGI 3 application.
    await _behind_proxy(scope, receive, send)


application = _trusting_proxy_headers
{%- endif %}
