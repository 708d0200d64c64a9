"""What the items API accepts (unknown fields and wrong types are refused), and
what it answers (the Answer models, for the OpenAPI document)."""

from datetime import datetime
from decimal import Decimal
from typing import Annotated

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StringConstraints,
    field_validator,
    model_validator,
)

from core.api import Answer, drop_null
from core.pages import cursor_of

Name = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=120)
]
CategoryName = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)
]
TagName = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=32)
]
Price = Annotated[
    Decimal, Field(ge=0, max_digits=10, decimal_places=2, allow_inf_nan=False)
]
Quantity = Annotated[StrictInt, Field(ge=0, le=2_147_483_647)]
ItemId = Annotated[StrictInt, Field(ge=1, le=2**63 - 1)]


def _without_nul(value):
    """PostgreSQL's text cannot hold NUL (psycopg refuses it: a 500), and no
    client means one: every string of every request is refused with it."""
    if isinstance(value, str) and "\x00" in value:
        raise ValueError("must not contain NUL characters")
    if isinstance(value, list):
        for element in value:
            _without_nul(element)
    return value


class Schema(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False)

    @field_validator("*", mode="before")
    @classmethod
    def no_nul_characters(cls, value):
        return _without_nul(value)


def _fields_not_null(schema: dict) -> None:
    """Patch's JSON Schema says what not_null enforces."""
    for field in schema["properties"].values():
        drop_null(field)


class Patch(Schema):
    """A partial update: a field left out stays as it is; null is refused, since
    no field of it may be emptied (the database would refuse it: a 500)."""

    model_config = ConfigDict(json_schema_extra=_fields_not_null)

    @field_validator("*", mode="before")
    @classmethod
    def not_null(cls, value):
        if value is None:
            raise ValueError("may be left out, but not null")
        return value


class CategoryIn(Schema):
    name: CategoryName


class ItemIn(Schema):
    name: Name
    category: CategoryName
    price: Price
    quantity: Quantity = 0
    tags: Annotated[list[TagName], Field(max_length=10)] = []


class ItemPatch(Patch):
    name: Name | None = None
    price: Price | None = None
    quantity: Quantity | None = None
    tags: Annotated[list[TagName], Field(max_length=10)] | None = None


class BulkItemsIn(Schema):
    items: Annotated[list[ItemIn], Field(min_length=1, max_length=100)]


class Restock(Schema):
    id: ItemId
    quantity: Quantity


class RestockIn(Schema):
    changes: Annotated[list[Restock], Field(min_length=1, max_length=100)]


# The deepest offset a listing takes: an OFFSET reads and drops every row before
# it, so deeper pages are read with the cursor (`next`) instead, whose cost does
# not grow with depth (core.pages). Elasticsearch's max_result_window is the same.
MAX_OFFSET = 10_000
Limit = Annotated[int, Field(ge=1, le=100)]


class ItemQuery(Schema):
    category: CategoryName | None = None
    limit: Limit = 20
    offset: Annotated[int, Field(ge=0, le=MAX_OFFSET)] = 0
    cursor: cursor_of(ItemId) | None = None

    @model_validator(mode="after")
    def offset_or_cursor(self):
        if self.offset and self.cursor is not None:
            raise ValueError("send offset or cursor, not both: a cursor is a position")
        return self


class ExportQuery(Schema):
    cursor: cursor_of(ItemId) | None = None


class CategoryQuery(Schema):
    limit: Limit = 100
    cursor: cursor_of(CategoryName) | None = None


# Prices are answered as strings, with their two decimal places: "12.50".
PriceText = Annotated[str, Field(pattern=r"^[0-9]+\.[0-9]{2}$")]


class Item(Answer):
    id: int
    name: str
    category: str
    tags: list[str]
    price: PriceText
    quantity: int
    created_at: datetime
    updated_at: datetime


class ItemPage(Answer):
    # Counted on offset pages only: a walk by cursor pays for one count, on its
    # first page, rather than one per page.
    total: int | None
    items: list[Item]
    # The URL of the next page (a cursor), null on the last one.
    next: str | None


class Created(Answer):
    created: int


class Updated(Answer):
    updated: int


class Stats(Answer):
    items: int
    units: int
    average_price: PriceText | None
    categories: int


class Category(Answer):
    id: int
    name: str


class CategoryCount(Category):
    items: int


class CategoryList(Answer):
    categories: list[CategoryCount]
    next: str | None
