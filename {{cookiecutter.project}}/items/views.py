"""The items JSON API and its event stream."""

from django.db import IntegrityError
from django.http import HttpResponse, JsonResponse, StreamingHttpResponse

from core import events, followups, idempotency
from core.api import ApiError, ApiView, parse_body, parse_query
from core.sse import event_stream_response
from items import store
from items.changes import EVENTS_GROUP, notify
from items.schemas import (
    BulkItemsIn,
    CategoryIn,
    ItemIn,
    ItemPatch,
    ItemQuery,
    RestockIn,
)


def _missing(item_id: int) -> ApiError:
    return ApiError(404, "not_found", f"item {item_id} does not exist")


class ItemCollection(ApiView):
    async def get(self, request):
        query = parse_query(request, ItemQuery)
        total, items = await store.list_items(query.category, query.limit, query.offset)
        return JsonResponse({"total": total, "items": items})

    async def post(self, request):
        return await idempotency.answer_once(request, self.create)

    async def create(self, request, key):
        item = await store.create_item(parse_body(request, ItemIn), key)
        await notify("item.created", item)
        return JsonResponse(item, status=201)


class ItemDetail(ApiView):
    async def get(self, request, item_id: int):
        item = await store.get_item(item_id)
        if item is None:
            raise _missing(item_id)
        return JsonResponse(item)

    async def patch(self, request, item_id: int):
        item = await store.update_item(item_id, parse_body(request, ItemPatch))
        if item is None:
            raise _missing(item_id)
        await notify("item.updated", item)
        return JsonResponse(item)

    async def delete(self, request, item_id: int):
        if not await store.delete_item(item_id):
            raise _missing(item_id)
        await notify("item.deleted", {"id": item_id})
        return HttpResponse(status=204)


class BulkItems(ApiView):
    async def post(self, request):
        return await idempotency.answer_once(request, self.create)

    async def create(self, request, key):
        items = parse_body(request, BulkItemsIn).items
        created = await store.bulk_create_items(items, key)
        await followups.run(
            "publish",
            events.publish(EVENTS_GROUP, "items.imported", {"count": created}),
        )
        return JsonResponse({"created": created}, status=201)


class RestockItems(ApiView):
    async def post(self, request):
        changes = parse_body(request, RestockIn).changes
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
    async def get(self, request):
        return JsonResponse(await store.stats())


class ItemExport(ApiView):
    """Newline-delimited JSON of every item, streamed as it is read."""

    async def get(self, request):
        async def lines():
            async for item in store.export_items():
                yield JsonResponse(item).content + b"\n"

        return StreamingHttpResponse(lines(), content_type="application/x-ndjson")


class CategoryCollection(ApiView):
    async def get(self, request):
        return JsonResponse({"categories": await store.list_categories()})

    async def post(self, request):
        data = parse_body(request, CategoryIn)
        try:
            category = await store.create_category(data.name)
        except IntegrityError:
            raise ApiError(409, "conflict", f"category {data.name!r} exists") from None
        return JsonResponse({"id": category.id, "name": category.name}, status=201)


class ItemEvents(ApiView):
    """Server-Sent Events: every change to items, as it happens."""

    async def get(self, request):
        return event_stream_response(EVENTS_GROUP)
