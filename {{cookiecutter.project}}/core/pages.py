"""Pages of API listings: keyset (cursor) pagination, as DRF's CursorPagination.

A page is the rows that follow the last row of the page before in a unique
ordering: `WHERE key > last ORDER BY key LIMIT n + 1` (the extra row says whether
another page follows). Its cost does not grow with how deep the page is, and a
row created or deleted meanwhile neither repeats a row nor skips one, which an
OFFSET does. The cursor is opaque to clients: the base64url of the JSON of the
last key. It is not signed: it only names a position, and a forged one names
another position, whose rows the client may read anyway.

Why not a library: DRF's CursorPagination needs DRF's request and views, and
django-cursor-pagination runs Django's synchronous ORM; here the window is a
queryset that core.reads runs on its asyncio connections.
"""

import base64
import binascii
import json
import re
from typing import Annotated, Any

from django.http import HttpRequest, QueryDict
from pydantic import BeforeValidator, TypeAdapter, ValidationError, WithJsonSchema

# A key's JSON is short (an id, a name): a longer cursor is not one of ours.
MAX_CURSOR_CHARS = 256
_CURSOR = re.compile(r"[A-Za-z0-9_-]+")


def encode(key) -> str:
    text = json.dumps(key, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(text).rstrip(b"=").decode()


def cursor_of(key_type) -> Any:
    """The type of a query parameter that holds a cursor over a key of
    `key_type`: validated, it is the key itself; a cursor this API did not make
    is refused like any other bad query parameter (a 400)."""
    adapter = TypeAdapter(key_type)

    def decode(text):
        if not isinstance(text, str):
            raise ValueError("not a cursor of this listing")
        if len(text) > MAX_CURSOR_CHARS:
            raise ValueError(f"a cursor has at most {MAX_CURSOR_CHARS} characters")
        if not _CURSOR.fullmatch(text):
            raise ValueError("not a cursor of this listing")
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            key = adapter.validate_json(raw, strict=True)
        except (binascii.Error, ValueError, ValidationError):
            raise ValueError("not a cursor of this listing") from None
        # No database text holds NUL (PostgreSQL refuses it in a query: a 500).
        if isinstance(key, str) and "\x00" in key:
            raise ValueError("not a cursor of this listing")
        return key

    return Annotated[
        Any,
        BeforeValidator(decode),
        WithJsonSchema(
            {
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_CURSOR_CHARS,
                "pattern": f"^{_CURSOR.pattern}$",
                "description": "The `next` of the page before: the page after it.",
            }
        ),
    ]


def window(queryset, key: str, limit: int, after=None, offset: int = 0):
    """The queryset of a page: ordered by `key` (a unique field), after the key
    `after` or, on an offset page, from the `offset`-th row; one row more than
    `limit`, for page() to tell whether another page follows."""
    if after is not None:
        queryset = queryset.filter(**{f"{key}__gt": after})
    return queryset.order_by(key)[offset : offset + limit + 1]


def page(rows: list[dict], key: str, limit: int) -> tuple[list[dict], str | None]:
    """The rows of the page read through window(), and the cursor of the page
    after it (None on the last page). Each row holds its `key` under that name."""
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    return rows, encode(rows[-1][key])


def next_link(request: HttpRequest, cursor: str | None) -> str | None:
    """The URL of the page after this one: this request's path and query, with
    the cursor instead of any offset, so that its filters and limit carry on."""
    if cursor is None:
        return None
    query: QueryDict = request.GET.copy()
    query.pop("offset", None)
    query["cursor"] = cursor
    return f"{request.path}?{query.urlencode()}"
