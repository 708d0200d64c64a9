"""Written by tests/bench into its copy of the service: the service's URLs plus the
views the scenarios need that the template has no reason to ship. Under WSGI
(BENCH_WSGI=1) each view is the synchronous one a WSGI team would write."""

import asyncio
import http.client
import os
import time

from config import urls
from core import events
from core.api import parse_body
from django.conf import settings
from django.core.cache import cache
from django.http import JsonResponse
from django.urls import path
from django.views.decorators.http import require_GET, require_POST
from items import store
from items.models import Item
from items.schemas import ItemIn, RestockIn
from items.views import EVENTS_GROUP

STOCK = os.environ.get("BENCH_STOCK") == "1"
# The service as it was before its native data path (the before-* configurations,
# BENCH_BEFORE=1) has no core.reads.
BEFORE = os.environ.get("BENCH_BEFORE") == "1"
if not BEFORE:
    from core import reads

UPSTREAM_HOST = "127.0.0.1"
UPSTREAM_PORT = int(os.environ.get("BENCH_UPSTREAM_PORT", "0"))
UPSTREAM_REQUEST = b"GET / HTTP/1.1\r\nHost: upstream\r\nConnection: close\r\n\r\n"


def _checked(response: bytes) -> int:
    if not response.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"upstream answered {response[:40]!r}")
    return len(response)


async def upstream(request):
    reader, writer = await asyncio.open_connection(UPSTREAM_HOST, UPSTREAM_PORT)
    try:
        writer.write(UPSTREAM_REQUEST)
        response = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    return JsonResponse({"upstream_bytes": _checked(response)})


def upstream_sync(request):
    connection = http.client.HTTPConnection(UPSTREAM_HOST, UPSTREAM_PORT, timeout=30)
    try:
        connection.request("GET", "/")
        reply = connection.getresponse()
        body = reply.read()
    finally:
        connection.close()
    if reply.status != 200:
        raise RuntimeError(f"upstream answered {reply.status}")
    return JsonResponse({"upstream_bytes": len(body)})


def _first_items():
    return Item.objects.values("id", "name", "category__name").order_by("id")[:10]


async def orm(request):
    """The same rows from every configuration: the service reads them natively;
    stock Django, and the service from before core.reads existed, through
    Django's async ORM (a thread hop per query)."""
    if STOCK or BEFORE:
        rows = [row async for row in _first_items()]
    else:
        rows = await reads.fetch(_first_items())
    return JsonResponse({"items": rows})


def orm_sync(request):
    return JsonResponse({"items": list(_first_items())})


# The service's cached-read and write endpoints are its own (items.views); under
# WSGI these views do what the service's store does, synchronously, with the
# same cache keys and timeout and the same transaction bodies (the functions
# that items.store runs through sync_to_async, kept by asgiref as `.func`).


@require_GET
def item_sync(request, item_id: int):
    key = store._cache_key(item_id)
    data = cache.get(key)
    if data is None:
        found = store._read_sync(store._items().filter(pk=item_id))
        if not found:
            return JsonResponse({"error": "not_found"}, status=404)
        data = found[0]
        cache.set(key, data, settings.ITEM_CACHE_SECONDS)
    return JsonResponse(data)


# A body the schema refuses raises ApiError, a 500 here: the bench sends none.
@require_POST
def create_sync(request):
    item = store.create_item.func(parse_body(request, ItemIn))
    return JsonResponse(item, status=201)


@require_POST
def restock_sync(request):
    changes = parse_body(request, RestockIn).changes
    wanted = {change.id: change.quantity for change in changes}
    # The ids that do not exist, in which case nothing was written.
    if store._restock.func(wanted):
        return JsonResponse({"error": "not_found"}, status=404)
    # After the commit, as the service does: no cached copy outlives the change.
    cache.delete_many([store._cache_key(item_id) for item_id in wanted])
    return JsonResponse({"updated": len(changes)})


def healthz_sync(request):
    return JsonResponse({"status": "ok"})


async def tiny(request):
    """What /healthz answers, on a path that Nginx serves publicly and tracing
    traces (neither does either for the probes)."""
    return JsonResponse({"status": "ok"})


async def publish(request):
    """Publishes `count` events to the items group, each stamped with its time."""
    count = int(request.GET.get("count", "1"))
    for number in range(count):
        await events.publish(EVENTS_GROUP, "bench", {"n": number, "sent": time.time()})
    return JsonResponse({"published": count})


if os.environ.get("BENCH_WSGI") == "1":
    urlpatterns = [
        path("healthz", healthz_sync),
        path("bench/tiny", healthz_sync),
        path("bench/upstream", upstream_sync),
        path("bench/orm", orm_sync),
        path("api/items", create_sync),
        path("api/items/restock", restock_sync),
        path("api/items/<int:item_id>", item_sync),
    ]
else:
    urlpatterns = [
        path("bench/upstream", upstream),
        path("bench/orm", orm),
        path("bench/publish", publish),
        path("bench/tiny", tiny),
    ]
urlpatterns += urls.urlpatterns
handler400 = urls.handler400
handler403 = urls.handler403
handler404 = urls.handler404
handler500 = urls.handler500
