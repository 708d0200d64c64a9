"""A task continues the trace of the request that enqueued it (core.tracing,
core.tasks): the real server (bin/serve) and the real worker (bin/worker) on the
real broker export to the tests' OTLP receiver (tests.otlp); so does a task that
core.outbox kept while the broker was down, sent later by the worker's relay.

The worker exports only at its shutdown (OTEL_BSP_SCHEDULE_DELAY): the spans
seen here arrived because its processes flushed them as they stopped.
"""

import json
import time
import uuid

import pytest
from django.conf import settings
from django.db import connection
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from core.models import PendingTask
from items.models import ItemChange
from tests.otlp import Receiver
from tests.test_tasks import (
    WAIT,
    run_web_process,
    start_worker,
    stop_worker,
    worker_database_url,
)
from tests.test_tracing import (
    PARENT_SPAN_ID,
    TRACE_ID,
    TRACEPARENT,
    call,
    exporting_to,
    log_lines,
    serve,
    stop,
)

pytestmark = pytest.mark.django_db(transaction=True)

TASK_SPAN = "task items.record_change"
# The trace of a request whose task fails at every attempt.
FAILING_TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
FAILING_TRACEPARENT = f"00-{FAILING_TRACE_ID}-b7ad6b7169203331-01"


def changes(**lookup) -> list[ItemChange]:
    """The ItemChange rows the worker wrote, once there is one: it commits in
    another process."""
    deadline = time.monotonic() + WAIT
    while True:
        try:
            found = list(ItemChange.objects.filter(**lookup))
        finally:
            connection.close()
        if found:
            return found
        assert time.monotonic() < deadline, f"no ItemChange {lookup} after {WAIT} s"
        time.sleep(0.2)


def finished(base: str, report_id: int) -> dict:
    deadline = time.monotonic() + WAIT
    while True:
        status, report = call(f"{base}/api/reports/{report_id}")
        assert status == 200, report
        if report["status"] == "failed":
            return report
        assert time.monotonic() < deadline, report
        time.sleep(0.2)


def traced_worker(receiver: Receiver, tmp_path):
    """bin/worker exporting to `receiver`, its resource marked as the worker's,
    its output in tmp_path / "worker.log". One task at a time: the process that
    runs the test's task is the one there is, and it has started once the task
    has run."""
    with (tmp_path / "worker.log").open("w") as output:
        return start_worker(
            worker_database_url(),
            tmp_path / "worker-metrics",
            output,
            WORKER_CONCURRENCY="1",
            **exporting_to(receiver, OTEL_RESOURCE_ATTRIBUTES="test.process=worker"),
        )


def attributes(span: Span) -> dict:
    return {a.key: a.value.string_value or a.value.int_value for a in span.attributes}


def the_task_span(receiver: Receiver, trace_id: str) -> Span:
    """The one span of record_change's attempt in trace `trace_id`."""
    [task] = task_spans(receiver, trace_id)
    assert task.name == TASK_SPAN
    return task


def task_spans(receiver: Receiver, trace_id: str) -> list[Span]:
    """The spans of the attempts in trace `trace_id`, by attempt; and the worker
    exported nothing outside a task's trace (no span of its library polling the
    broker)."""
    worker = [s for r, s in receiver.spans if r.get("test.process") == "worker"]
    tasks = [s for s in worker if s.kind == Span.SPAN_KIND_CONSUMER]
    assert {s.trace_id for s in worker} == {s.trace_id for s in tasks}
    traced = [s for s in tasks if s.trace_id.hex() == trace_id]
    return sorted(traced, key=lambda s: attributes(s)["task.attempt"])


def assert_queries_are_the_tasks(receiver: Receiver, task: Span) -> None:
    """The attempt's SQL statements (its delivery's row, the body's insert) are
    children of its span."""
    children = [s for _, s in receiver.spans if s.parent_span_id == task.span_id]
    assert children
    assert {s.kind for s in children} == {Span.SPAN_KIND_CLIENT}
    assert {attributes(s).get("db.system") for s in children} == {connection.vendor}
    statements = " ".join(str(attributes(s).get("db.statement")) for s in children)
    assert "items_itemchange" in statements
    assert "core_taskdelivery" in statements


def test_a_task_continues_the_trace_of_the_request_that_enqueued_it(receiver, tmp_path):
    worker = traced_worker(receiver, tmp_path)
    try:
        server, base = serve(
            exporting_to(receiver, OTEL_RESOURCE_ATTRIBUTES="test.process=web"),
            tmp_path / "server.log",
        )
        try:
            status, item = call(
                f"{base}/api/items",
                {"traceparent": TRACEPARENT},
                method="POST",
                body={"name": "Traced", "category": "tools", "price": "1.00"},
            )
            assert status == 201, item
            changes(item_id=item["id"], event="item.created")
            # A report of a category that does not exist: every attempt fails.
            status, report = call(
                f"{base}/api/reports",
                {"traceparent": FAILING_TRACEPARENT},
                method="POST",
                body={"category": "nowhere"},
            )
            assert status == 202, report
            finished(base, report["id"])
        finally:
            stop(server)
    finally:
        stop_worker(worker)

    [request] = [
        s
        for _, s in receiver.spans
        if s.trace_id.hex() == TRACE_ID and s.kind == Span.SPAN_KIND_SERVER
    ]
    assert (request.name, request.parent_span_id.hex()) == (
        "POST api/items",
        PARENT_SPAN_ID,
    )
    task = the_task_span(receiver, TRACE_ID)
    assert task.parent_span_id == request.span_id
    details = attributes(task)
    assert details["task.name"] == "items.record_change"
    assert (details["task.attempt"], details["task.outcome"]) == (1, "succeeded")
    assert details["messaging.destination.name"] == settings.TASK_QUEUE
    assert_queries_are_the_tasks(receiver, task)

    # The attempt's log lines carry its trace and span.
    job = details["messaging.message.id"]
    [succeeded] = [
        line
        for line in log_lines(tmp_path / "worker.log")
        if line["message"] == "task succeeded" and line.get("job_id") == job
    ]
    assert (succeeded["trace_id"], succeeded["span_id"]) == (
        TRACE_ID,
        task.span_id.hex(),
    )

    # Each attempt of a task that is retried continues the request's trace, and
    # a failed one records its error.
    [reports] = [
        s
        for _, s in receiver.spans
        if s.trace_id.hex() == FAILING_TRACE_ID and s.kind == Span.SPAN_KIND_SERVER
    ]
    attempts = task_spans(receiver, FAILING_TRACE_ID)
    assert [
        (s.name, s.parent_span_id, attributes(s)["task.outcome"]) for s in attempts
    ] == [
        ("task items.build_report", reports.span_id, "retried"),
        ("task items.build_report", reports.span_id, "retried"),
        ("task items.build_report", reports.span_id, "failed"),
    ]
    for attempt in attempts:
        assert attempt.status.code == attempt.status.STATUS_CODE_ERROR
        [error] = [e for e in attempt.events if e.name == "exception"]
        assert {
            a.key: a.value.string_value
            for a in error.attributes
            if a.key in ("exception.type", "exception.message")
        } == {
            "exception.type": "LookupError",
            "exception.message": "category 'nowhere' does not exist",
        }


# A web process whose broker refuses the task a write kept within a request's
# span: the outbox leaves it to the relay (core.outbox).
BROKER_DOWN = """
import asyncio, json, sys
import django

django.setup()
from asgiref.sync import sync_to_async
from django.db import transaction
from opentelemetry import trace
from core import outbox, tracing
from items.tasks import record_change

tracing.setup()


async def refused(task, *args):
    raise ConnectionRefusedError("the broker is down")


type(record_change).enqueue = refused


@sync_to_async
def write():
    with transaction.atomic():
        outbox.keep(record_change, 424250, "item.updated", sys.argv[1])


async def main():
    with trace.get_tracer("test").start_as_current_span("request") as span:
        await write()
    return span.get_span_context()


context = asyncio.run(main())
tracing.shutdown()
# A file, not stdout: the service's JSON log lines go to stdout too.
with open(sys.argv[2], "w") as result:
    json.dump({"trace_id": f"{context.trace_id:032x}",
               "span_id": f"{context.span_id:016x}"}, result)
"""


def test_a_task_the_outbox_kept_continues_its_requests_trace(receiver, tmp_path):
    change_id = str(uuid.uuid4())
    result_file = tmp_path / "request.json"
    run_web_process(BROKER_DOWN, change_id, str(result_file), **exporting_to(receiver))
    request = json.loads(result_file.read_text())
    try:
        [kept] = PendingTask.objects.all()
    finally:
        connection.close()
    # version-trace-span-flags
    assert kept.trace["traceparent"].split("-")[1:3] == [
        request["trace_id"],
        request["span_id"],
    ]

    # The worker's relay sends it, within the context it kept.
    worker = traced_worker(receiver, tmp_path)
    try:
        changes(change_id=change_id)
    finally:
        stop_worker(worker)

    task = the_task_span(receiver, request["trace_id"])
    assert task.parent_span_id.hex() == request["span_id"]
    assert_queries_are_the_tasks(receiver, task)
