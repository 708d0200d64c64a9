"""The items JSON API and its event stream."""

from django.db import IntegrityError
from django.http import HttpResponse, JsonResponse, StreamingHttpResponse

from core import events
from core.api import ApiError, ApiView, parse_body, parse_query
from core.sse import event_stream_response
from items import store
{%- if cookiecutter.tasks != "none" %}
from items.models import Item, Report
{%- endif %}
from items.schemas import (
    BulkItemsIn,
    CategoryIn,
    ItemIn,
    ItemPatch,
    ItemQuery,
{%- if cookiecutter.tasks != "none" %}
    ReportIn,
{%- endif %}
    RestockIn,
)
{%- if cookiecutter.tasks != "none" %}
from items.signals import item_changed
from items.tasks import build_report
{%- endif %}

# The channel-layer group that SSE streams and WebSocket consumers listen to.
EVENTS_GROUP = "items"


def _missing(item_id: int) -> ApiError:
    return ApiError(404, "not_found", f"item {item_id} does not exist")


class ItemCollection(ApiView):
    async def get(self, request):
        query = parse_query(request, ItemQuery)
        total, items = await store.list_items(query.category, query.limit, query.offset)
        return JsonResponse({"total": total, "items": items})

    async def post(self, request):
        item = await store.create_item(parse_body(request, ItemIn))
        await events.publish(EVENTS_GROUP, "item.created", item)
{%- if cookiecutter.tasks != "none" %}
        await item_changed.asend(Item, item_id=item["id"], event="item.created")
{%- endif %}
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
        await events.publish(EVENTS_GROUP, "item.updated", item)
{%- if cookiecutter.tasks != "none" %}
        await item_changed.asend(Item, item_id=item_id, event="item.updated")
{%- endif %}
        return JsonResponse(item)

    async def delete(self, request, item_id: int):
        if not await store.delete_item(item_id):
            raise _missing(item_id)
        await events.publish(EVENTS_GROUP, "item.deleted", {"id": item_id})
{%- if cookiecutter.tasks != "none" %}
        await item_changed.asend(Item, item_id=item_id, event="item.deleted")
{%- endif %}
        return HttpResponse(status=204)


class BulkItems(ApiView):
    async def post(self, request):
        created = await store.bulk_create_items(parse_body(request, BulkItemsIn).items)
        await events.publish(EVENTS_GROUP, "items.imported", {"count": created})
        return JsonResponse({"created": created}, status=201)


class RestockItems(ApiView):
    async def post(self, request):
        changes = parse_body(request, RestockIn).changes
        missing = await store.restock(changes)
        if missing:
            raise ApiError(
                404, "not_found", f"items {', '.join(map(str, missing))} do not exist"
            )
        await events.publish(
            EVENTS_GROUP, "items.restocked", {"ids": sorted(c.id for c in changes)}
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
{%- if cookiecutter.tasks != "none" %}


def report_data(report: Report) -> dict:
    return {
        "id": report.id,
        "category": report.category or None,
        "status": report.status,
        "attempts": report.attempts,
        "result": report.result,
        "error": report.error or None,
        "created_at": report.created_at.isoformat(),
        "finished_at": report.finished_at and report.finished_at.isoformat(),
    }


class ReportCollection(ApiView):
    """A stock report is built by the worker: 202 now, the result at its URL."""

    async def post(self, request):
        data = parse_body(request, ReportIn)
        report = await Report.objects.acreate(category=data.category or "")
        await build_report.enqueue(report.id)
        response = JsonResponse(report_data(report), status=202)
        response["Location"] = f"/api/reports/{report.id}"
        return response


class ReportDetail(ApiView):
    async def get(self, request, report_id: int):
        try:
            report = await Report.objects.aget(pk=report_id)
        except Report.DoesNotExist:
            raise ApiError(
                404, "not_found", f"report {report_id} does not exist"
            ) from None
        return JsonResponse(report_data(report))
{%- endif %}
