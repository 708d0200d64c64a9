"""Stock reports, built in the background: POST /api/reports answers 202 at once,
the worker (items.tasks.build_report) fills the report in, GET /api/reports/<id>
shows how far it got. config/urls.py includes the routes below."""

from datetime import datetime
from typing import Any

from django.http import JsonResponse
from django.urls import path

import items.urls  # noqa: F401  (registers the item_id converter of the routes below)
from core import followups, reads
from core.api import Answer, ApiError, ApiView, operation, unavailable
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

    @operation({202: ReportOut}, body=ReportIn)
    async def post(self, request, body: ReportIn):
        report = await Report.objects.acreate(category=body.category or "")
        if not await followups.run("enqueue", build_report.enqueue(report.id)):
            # No task, no report: one left queued would never be built. A task
            # that did reach the broker finds its report gone and does nothing.
            await Report.objects.filter(pk=report.id).adelete()
            raise unavailable(
                "queue_unavailable", "the task queue is not available, retry"
            )
        values = {field: getattr(report, field) for field in FIELDS}
        response = JsonResponse(report_data(values), status=202)
        response["Location"] = f"/api/reports/{report.id}"
        return response


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
