"""The items JSON API and its event stream."""

import time

from django.conf import settings
from django.db import IntegrityError
from django.http import HttpResponse, JsonResponse, StreamingHttpResponse

from core import events, followups
from core.api import ApiError, ApiView, Stream, operation
from core.pages import encode, next_link
from core.sse import event_stream_response
from items import store
from items.changes import EVENTS_GROUP, notify
from items.schemas import (
    BulkItemsIn,
    Category,
    CategoryIn,
    CategoryList,
    CategoryQuery,
    Created,
    ExportQuery,
    Item,
    ItemIn,
    ItemPage,
    ItemPatch,
    ItemQuery,
    RestockIn,
    Stats,
    Updated,
)


def _missing(item_id: int) -> ApiError:
    return ApiError(404, "not_found", f"item {item_id} does not exist")


class ItemCollection(ApiView):
    @operation({200: ItemPage}, query=ItemQuery)
    async def get(self, request, query: ItemQuery):
        total, items, cursor = await store.list_items(query)
        return JsonResponse(
            {"total": total, "items": items, "next": next_link(request, cursor)}
        )

    @operation({201: Item}, body=ItemIn, idempotent=True, location="item")
    async def post(self, request, body: ItemIn, idempotency_key):
        item = await store.create_item(body, idempotency_key)
        await notify("item.created", item)
        return JsonResponse(item, status=201)


class ItemDetail(ApiView):
    @operation({200: Item}, errors=[404])
    async def get(self, request, item_id: int):
        item = await store.get_item(item_id)
        if item is None:
            raise _missing(item_id)
        return JsonResponse(item)

    @operation({200: Item}, body=ItemPatch, errors=[404])
    async def patch(self, request, item_id: int, body: ItemPatch):
        item = await store.update_item(item_id, body)
        if item is None:
            raise _missing(item_id)
        await notify("item.updated", item)
        return JsonResponse(item)

    @operation({204: None}, errors=[404])
    async def delete(self, request, item_id: int):
        if not await store.delete_item(item_id):
            raise _missing(item_id)
        await notify("item.deleted", {"id": item_id})
        return HttpResponse(status=204)


class BulkItems(ApiView):
    @operation({201: Created}, body=BulkItemsIn, idempotent=True)
    async def post(self, request, body: BulkItemsIn, idempotency_key):
        created = await store.bulk_create_items(body.items, idempotency_key)
        await followups.run(
            "publish",
            events.publish(EVENTS_GROUP, "items.imported", {"count": created}),
        )
        return JsonResponse({"created": created}, status=201)


class RestockItems(ApiView):
    @operation({200: Updated}, body=RestockIn, errors=[404])
    async def post(self, request, body: RestockIn):
        changes = body.changes
        missing = await store.restock(changes)
        if missing:
            raise ApiError(
                404, "not_found", f"items {', '.join(map(str, missing))} do not exist"
            )
        await followups.run(
            "publish",
            events.publish(
                EVENTS_GROUP, "items.restocked", {"ids": sorted(c.id for c in changes)}
            ),
        )
        return JsonResponse({"updated": len(changes)})


class ItemStats(ApiView):
    @operation({200: Stats})
    async def get(self, request):
        return JsonResponse(await store.stats())


def _line(data: dict) -> bytes:
    return JsonResponse(data).content + b"\n"


class ItemExport(ApiView):
    """Newline-delimited JSON of every item, streamed as it is read."""

    # The whole table, page after page: only for callers the service knows.
    reads_need_token = True

    @operation(
        {
            200: Stream(
                "application/x-ndjson",
                "One Item per line, by id. A request sends at most EXPORT_MAX_ROWS "
                "items for at most EXPORT_MAX_SECONDS; one cut short there ends "
                'with the line {"next": URL}: the items after it.',
            )
        },
        query=ExportQuery,
    )
    async def get(self, request, query: ExportQuery):
        # Bounded per request: a worker's stream, and what a client can ask of
        # the database in one go, end; the client goes on from `next`. A client
        # that stops reading is Nginx's send_timeout's (buffering is off).
        deadline = time.monotonic() + settings.EXPORT_MAX_SECONDS

        async def lines():
            sent, last = 0, query.cursor
            async for item in store.export_items(query.cursor):
                if sent and (
                    sent >= settings.EXPORT_MAX_ROWS or time.monotonic() >= deadline
                ):
                    yield _line({"next": next_link(request, encode(last))})
                    return
                yield _line(item)
                sent, last = sent + 1, item["id"]

        response = StreamingHttpResponse(lines(), content_type="application/x-ndjson")
        # Nginx passes the lines on as they come instead of spooling the whole
        # export to its temporary files.
        response["X-Accel-Buffering"] = "no"
        return response


class CategoryCollection(ApiView):
    @operation({200: CategoryList}, query=CategoryQuery)
    async def get(self, request, query: CategoryQuery):
        categories, cursor = await store.list_categories(query)
        return JsonResponse(
            {"categories": categories, "next": next_link(request, cursor)}
        )

    @operation({201: Category}, body=CategoryIn, errors=[409])
    async def post(self, request, body: CategoryIn):
        try:
            category = await store.create_category(body.name)
        except IntegrityError:
            raise ApiError(409, "conflict", f"category {body.name!r} exists") from None
        return JsonResponse({"id": category.id, "name": category.name}, status=201)


class ItemEvents(ApiView):
    """Server-Sent Events: every change to items, as it happens."""

    @operation(
        {200: Stream("text/event-stream", "Events until the client or server leaves.")},
        errors=[400],
    )
    async def get(self, request):
        return event_stream_response(request, EVENTS_GROUP)
