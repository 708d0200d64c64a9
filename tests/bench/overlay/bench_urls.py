"""Written by tests/bench into its copy of the service: the service's URLs plus the
views the scenarios need that the template has no reason to ship. Under WSGI
(BENCH_WSGI=1) each view is the synchronous one a WSGI team would write."""

import asyncio
import http.client
import os
import time

from config import urls
from core import events
from django.http import JsonResponse
from django.urls import path
from items.models import Item
from items.views import EVENTS_GROUP

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


def _item(item: Item) -> dict:
    return {"id": item.id, "name": item.name, "category": item.category.name}


def _first_items():
    return Item.objects.select_related("category").order_by("id")[:10]


async def orm(request):
    return JsonResponse({"items": [_item(item) async for item in _first_items()]})


def orm_sync(request):
    return JsonResponse({"items": [_item(item) for item in _first_items()]})


def healthz_sync(request):
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
        path("bench/upstream", upstream_sync),
        path("bench/orm", orm_sync),
    ]
else:
    urlpatterns = [
        path("bench/upstream", upstream),
        path("bench/orm", orm),
        path("bench/publish", publish),
    ]
urlpatterns += urls.urlpatterns
handler400 = urls.handler400
handler403 = urls.handler403
handler404 = urls.handler404
handler500 = urls.handler500
