"""The ASGI application every server runs: HTTP, {% if cookiecutter.websockets == "yes" %}WebSocket {% endif %}and lifespan."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
# Django must be set up before anything that imports models (ruff: E402 allowed).
http_application = get_asgi_application()

{% if cookiecutter.websockets == "yes" -%}
from channels.auth import AuthMiddlewareStack
from channels.routing import ProtocolTypeRouter, URLRouter
from channels.security.websocket import AllowedHostsOriginValidator

from core.lifespan import lifespan
from items.routing import websocket_urlpatterns
{%- else -%}
from channels.routing import ProtocolTypeRouter

from core.lifespan import lifespan
{%- endif %}

application = ProtocolTypeRouter(
    {
        "http": http_application,
{%- if cookiecutter.websockets == "yes" %}
        # Browsers send Origin; refusing foreign origins stops cross-site
        # WebSocket hijacking of a signed-in user's session.
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
        ),
{%- endif %}
        "lifespan": lifespan,
    }
)
