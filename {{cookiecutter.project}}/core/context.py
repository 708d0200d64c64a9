"""The request id of the request being served, for logs and responses."""

import re
import uuid
from contextvars import ContextVar

REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)

# A proxy's id is reused only if it cannot forge log fields or grow without bound.
_ACCEPTED = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def request_id_from(header: str | None) -> str:
    """The X-Request-ID the proxy sent, or a new one if it sent none or a bad one."""
    if header and _ACCEPTED.match(header):
        return header
    return uuid.uuid4().hex
