"""The items' background tasks: what runs outside the request, in the worker.

Each is a coroutine declared with core.queue.task: the queue library, its retries
and its time limit are the adapter's business, metrics and logs core.tasks'. The
worker imports this module by its name, as every app's `tasks` (core.queueing).
"""

from django.db.models import F, Sum
from django.utils import timezone

from core.queue import task
from items.models import Category, Item, ItemChange, Report


@task("items.record_change", retries=3, time_limit=30)
async def record_change(item_id: int, event: str, change_id: str | None = None) -> None:
    """Enqueued by items.signals whenever an item is created, changed or deleted:
    one row per change, however often it is delivered. A change enqueued by an
    older release has no id."""
    if change_id is None:
        await ItemChange.objects.acreate(item_id=item_id, event=event)
        return
    await ItemChange.objects.aget_or_create(
        change_id=change_id, defaults={"item_id": item_id, "event": event}
    )


@task("items.build_report", retries=2, time_limit=120)
async def build_report(report_id: int) -> None:
    """Enqueued by POST /api/reports. A category that does not exist (yet) fails
    the attempt: it is tried again, in case the category is created meanwhile."""
    report = await Report.objects.filter(pk=report_id).afirst()
    if report is None or report.status == Report.Status.DONE:
        # Built already: this is a second delivery. None: withdrawn by an older
        # release, whose request deleted a report it could not enqueue.
        return
    report.attempts += 1
    items = Item.objects.all()
    if report.category:
        if not await Category.objects.filter(name=report.category).aexists():
            report.error = f"category {report.category!r} does not exist"
            last = report.attempts > build_report.retries
            report.status = Report.Status.FAILED if last else Report.Status.RETRYING
            report.finished_at = timezone.now() if last else None
            await report.asave()
            raise LookupError(report.error)
        items = items.filter(category__name=report.category)
    totals = await items.aaggregate(
        units=Sum("quantity"), value=Sum(F("quantity") * F("price"))
    )
    report.result = {
        "items": await items.acount(),
        "units": totals["units"] or 0,
        "value": str(totals["value"] or 0),
    }
    report.status = Report.Status.DONE
    report.error = ""
    report.finished_at = timezone.now()
    await report.asave()
