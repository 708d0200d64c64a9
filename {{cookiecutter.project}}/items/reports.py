"""Stock reports, built in the background: POST /api/reports answers 202 at once,
the worker (items.tasks.build_report) fills the report in, GET /api/reports/<id>
shows how far it got. config/urls.py includes the routes below.

A report's task is sent as an item's change is (core.outbox): kept in the
report's own transaction, sent right after it has committed, or, with the broker
down or this process dead since, later by the task worker's relay. So a report
that was answered 202 is built, late at worst, and the answer never depends on
the broker. A create takes an Idempotency-Key: a client that retries gets the
first report, not a second one built too."""

from datetime import datetime
from typing import Any

from asgiref.sync import sync_to_async
from django.db import transaction
from django.http import JsonResponse
from django.urls import path

import items.urls  # noqa: F401  (registers the item_id converter of the routes below)
from core import idempotency, outbox, reads
from core.api import Answer, ApiError, ApiView, operation
from items.models import Report
from items.schemas import CategoryName, Schema
from items.tasks import build_report


class ReportIn(Schema):
    category: CategoryName | None = None


class ReportOut(Answer):
    id: int
    category: str | None
    status: Report.Status
    attempts: int
    result: dict[str, Any] | None
    error: str | None
    created_at: datetime
    finished_at: datetime | None


FIELDS = (
    "id",
    "category",
    "status",
    "attempts",
    "result",
    "error",
    "created_at",
    "finished_at",
)


def report_data(report: dict) -> dict:
    """The JSON form of a report, from its FIELDS."""
    return {
        "id": report["id"],
        "category": report["category"] or None,
        "status": report["status"],
        "attempts": report["attempts"],
        "result": report["result"],
        "error": report["error"] or None,
        "created_at": report["created_at"].isoformat(),
        "finished_at": report["finished_at"] and report["finished_at"].isoformat(),
    }


class ReportCollection(ApiView):
    """A stock report is built by the worker: 202 now, the result at its URL."""

    @operation({202: ReportOut}, body=ReportIn, idempotent=True, location="report")
    async def post(self, request, body: ReportIn, idempotency_key):
        report = await _create_report(body.category or "", idempotency_key)
        return JsonResponse(report, status=202)


@sync_to_async
def _create_report(category: str, key: idempotency.Key | None) -> dict:
    """The new report's JSON form. Its task, and with an Idempotency-Key its
    answer, commit with the report."""
    with transaction.atomic():
        report = Report.objects.create(category=category)
        created = report_data({field: getattr(report, field) for field in FIELDS})
        if key:
            idempotency.remember(key, 202, created)
        outbox.keep(build_report, report.pk)
        return created


class ReportDetail(ApiView):
    @operation({200: ReportOut}, errors=[404])
    async def get(self, request, report_id: int):
        found = await reads.fetch(Report.objects.filter(pk=report_id).values(*FIELDS))
        if not found:
            raise ApiError(404, "not_found", f"report {report_id} does not exist")
        return JsonResponse(report_data(found[0]))


urlpatterns = [
    path("reports", ReportCollection.as_view(), name="reports"),
    path("reports/<item_id:report_id>", ReportDetail.as_view(), name="report"),
]
