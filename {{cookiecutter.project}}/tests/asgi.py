"""Helpers that talk ASGI to the application, as a server would."""

import json

from asgiref.testing import ApplicationCommunicator
from channels.layers import get_channel_layer

from tests import tokens


def http_scope(
    path: str, method: str = "GET", headers=(), token: str | None = tokens.TOKEN
) -> dict:
    """A request's scope, with `Authorization: Bearer token` unless token is None."""
    path, _, query = path.partition("?")
    if token is not None:
        headers = [(b"authorization", f"Bearer {token}".encode()), *headers]
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(b"host", b"localhost"), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }


async def exchange(
    application,
    method: str,
    path: str,
    content: bytes = b"",
    headers=(),
    token: str | None = tokens.TOKEN,
) -> tuple[dict, bytes]:
    """One request through the whole ASGI application, in a request context of its
    own (as a server makes it): the response's start message and its whole body."""
    communicator = ApplicationCommunicator(
        application, http_scope(path, method, headers, token)
    )
    await communicator.send_input({"type": "http.request", "body": content})
    start = await communicator.receive_output(timeout=10)
    body = b""
    while True:
        message = await communicator.receive_output(timeout=10)
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    await communicator.wait(timeout=10)
    return start, body


async def request(
    application,
    method: str,
    path: str,
    body: dict | None = None,
    token: str | None = tokens.TOKEN,
) -> tuple[int, dict, dict]:
    """exchange() with JSON: the status, the headers (lowercase names) and the
    JSON body."""
    headers = [(b"content-type", b"application/json")] if body is not None else []
    content = b"" if body is None else json.dumps(body).encode()
    start, response = await exchange(application, method, path, content, headers, token)
    names = {key.decode().lower(): value.decode() for key, value in start["headers"]}
    return start["status"], names, json.loads(response) if response else {}


async def open_stream(
    application, path: str, headers=()
) -> tuple[ApplicationCommunicator, dict]:
    """Sends a GET and returns once the response headers have arrived."""
    communicator = ApplicationCommunicator(
        application, http_scope(path, "GET", headers)
    )
    await communicator.send_input(
        {"type": "http.request", "body": b"", "more_body": False}
    )
    start = await communicator.receive_output(timeout=5)
    return communicator, start


async def next_chunk(communicator: ApplicationCommunicator) -> bytes:
    message = await communicator.receive_output(timeout=5)
    assert message["type"] == "http.response.body"
    return message["body"]


async def group_membership(group: str) -> dict:
    """The channels in a channel-layer group, each with when it joined
    (time.time(); its membership expires counting from then), for the in-memory
    and Redis layers."""
    layer = get_channel_layer()
    if hasattr(layer, "groups"):
        return dict(layer.groups.get(group, {}))
    async with layer.connection(layer.consistent_hash(group)) as connection:
        return dict(
            await connection.zrange(layer._group_key(group), 0, -1, withscores=True)
        )


async def group_members(group: str) -> list:
    """The names of the channels in a channel-layer group."""
    return list(await group_membership(group))
