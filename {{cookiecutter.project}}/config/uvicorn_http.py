"""Uvicorn's HTTP protocol (httptools) answering the requests it cannot parse
with this service's JSON error instead of plain text.

A request that never reaches the app (a malformed request line or header, an
unknown method, raw UTF-8 in the URL) gets its 400 from Uvicorn itself, whose
body is a hard-coded `Invalid HTTP request received.`: no setting of Uvicorn or
uvicorn-worker changes it, and no library does, so this subclass writes the
answer instead. Nginx answers such requests in front of the app; this one is for
whoever reaches the app's port directly. bin/serve (Uvicorn's --http) and
config/gunicorn_worker_class.py name it.
"""

import json

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

BODY = json.dumps({"error": "bad_request", "message": "invalid HTTP request"}).encode()


class ServiceHttpToolsProtocol(HttpToolsProtocol):
    # Called by HttpToolsProtocol.data_received once the parser has failed and
    # Uvicorn has logged its warning (uvicorn.error, a JSON line like any other).
    def send_400_response(self, msg: str) -> None:
        headers = [
            *self.server_state.default_headers,
            (b"content-type", b"application/json"),
            (b"content-length", str(len(BODY)).encode()),
            (b"connection", b"close"),
        ]
        self.transport.write(
            STATUS_LINE[400]
            + b"".join(name + b": " + value + b"\r\n" for name, value in headers)
            + b"\r\n"
            + BODY
        )
        self.transport.close()
