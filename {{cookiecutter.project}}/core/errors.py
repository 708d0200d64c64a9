"""Errors to Sentry, when SENTRY_DSN is set; off, and sentry-sdk never imported,
otherwise.

What reaches Sentry is what the service logs at ERROR: an unhandled exception in
a request (django.request's "Internal Server Error"), a task's last failure, a
task lost to the outbox, a failed startup or backup. Each event carries the
request id and the trace id as tags: from an error, a team finds the request's
log lines (request_id) and its trace (trace_id, when tracing is on).

Only Sentry's logging integration is installed, not its Django one. The Django
integration wraps every database cursor, signal receiver, template and view to
record breadcrumbs and spans: work on every request that core.handler is built
to avoid, for events that the log already has. Traces are OpenTelemetry's
(core.tracing); Sentry's own tracing stays off. Frames' local variables are
not sent (a request's may hold a bearer token under any name), nor, by default,
any personal data.

Every process sets it up as Django starts (core.apps): the server's workers,
the task worker's processes and management commands. The SDK starts its sending
thread on the first event, in the process that sends it, so forked processes
each have their own; it sends what is left at exit (AtexitIntegration).
"""

import logging

from django.conf import settings

from core import tracing
from core.context import REQUEST_ID


def setup() -> None:
    if not settings.SENTRY_DSN:
        return
    import sentry_sdk
    from sentry_sdk.integrations.atexit import AtexitIntegration
    from sentry_sdk.integrations.dedupe import DedupeIntegration
    from sentry_sdk.integrations.excepthook import ExcepthookIntegration
    from sentry_sdk.integrations.logging import LoggingIntegration, ignore_logger

    sentry_sdk.init(
        dsn=settings.SENTRY_DSN,
        environment=settings.SENTRY_ENVIRONMENT,
        release=f"{settings.SERVICE_NAME}@{settings.SERVICE_VERSION}",
        default_integrations=False,
        auto_enabling_integrations=False,
        integrations=[
            AtexitIntegration(),
            DedupeIntegration(),
            ExcepthookIntegration(),
            # Events from ERROR records; no breadcrumbs from the lines before.
            LoggingIntegration(level=None, event_level=logging.ERROR),
        ],
        before_send=with_ids,
        include_local_variables=False,
        send_default_pii=False,
        traces_sample_rate=None,
    )
    # The access line of a 5xx: the error is django.request's record, with its
    # traceback. A 503 while a dependency is down is a metric and an alert, not
    # an event per request.
    ignore_logger("core.access")


def with_ids(event: dict, hint: dict) -> dict:
    """Tags the event with the current request id and trace id, where it has them."""
    tags = event.setdefault("tags", {})
    if (request_id := REQUEST_ID.get()) is not None:
        tags["request_id"] = request_id
    if (trace_id := tracing.current_trace_id()) is not None:
        tags["trace_id"] = trace_id
    return event
