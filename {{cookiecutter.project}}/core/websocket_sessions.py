"""Channels' session and authentication middleware, for the WebSockets that send
a session cookie only.

AuthMiddlewareStack holds, for as long as each connection is open, a copy of its
scope per layer, a lazy session and a lazy user, and a coroutine per layer:
2.9 KiB of each idle WebSocket (tracemalloc). This API's clients show a bearer
token (core.auth); a connection without the session cookie has no session to
load, so it skips the stack and gets the anonymous user the stack would have
given it. One with the cookie goes through the whole stack, as before.
"""

from channels.auth import AuthMiddlewareStack
from django.conf import settings
from django.contrib.auth.models import AnonymousUser


def sessions_when_sent(inner):
    """`inner` behind Channels' AuthMiddlewareStack when the connection sends the
    session cookie; with scope["user"] anonymous otherwise."""
    stack = AuthMiddlewareStack(inner)
    # In a Cookie header, a name is followed by "=": a header that merely holds
    # the name elsewhere goes through the stack, which finds no session.
    sent = settings.SESSION_COOKIE_NAME.encode("latin-1") + b"="

    async def application(scope, receive, send):
        for name, value in scope.get("headers", ()):
            if name == b"cookie" and sent in value:
                return await stack(scope, receive, send)
        return await inner(dict(scope, user=AnonymousUser()), receive, send)

    return application
