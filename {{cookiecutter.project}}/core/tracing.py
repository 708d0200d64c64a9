"""OpenTelemetry traces, configured by the standard OTEL_* variables only.

Off unless OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is
set (and OTEL_SDK_DISABLED is not true). Off costs nothing on the request path:
no instrumentation is loaded, no TracerProvider, span processor or exporter is
made, the ASGI application is not wrapped, and the log filter, the middleware
and the handler test one boolean. (redis-py imports parts of the OpenTelemetry
API and metrics SDK by itself when they are installed, for metrics of its own
that stay off.)

On, each server worker process sets up its own TracerProvider at ASGI lifespan
startup (setup(), from core.lifespan), that is after the server has forked or
spawned it: the BatchSpanProcessor's export thread is started in the process
that ends it, and lifespan shutdown flushes it (shutdown()). The SDK reads the
rest of the standard variables itself: OTEL_SERVICE_NAME (default: the project
slug), OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG
(default: parentbased_always_on), OTEL_PROPAGATORS (default: W3C tracecontext
and baggage), OTEL_BSP_* and OTEL_EXPORTER_OTLP_* (OTLP over HTTP, protobuf).

What is traced:
  - every HTTP request, one span each (an event stream: one span for the
    whole stream){% if cookiecutter.websockets == "yes" %}, and every WebSocket connection, one span from
    accept to close{% endif %}; by Traced below (why not the official ASGI
    instrumentation: its docstring). The span is named by the URL pattern (`GET
    api/items/<item_id:item_id>`), which core.middleware sets once Django has
    resolved it; the raw path never names a span. Probes and /metrics are not
    traced. Each response carries its trace in a W3C `traceresponse` header,
    which Nginx logs (deploy/nginx/nginx.conf).
  - with the official instrumentations:
    - SQL statements: on SQLite, Django's connections
      (opentelemetry-instrumentation-sqlite3){% if cookiecutter.database == "postgresql" %}; on PostgreSQL, Django's
      synchronous connections and core.reads' asyncio pool alike, as both are
      psycopg 3 connections (opentelemetry-instrumentation-psycopg){% elif cookiecutter.database == "mysql" %}; on MySQL, Django's
      connections (opentelemetry-instrumentation-mysqlclient) and, by
      core.database_server (no instrumentation exists for asyncmy), the reads
      of core.reads' asyncio pool, with the same attributes{% endif %}.
    - Redis commands (opentelemetry-instrumentation-redis): the cache (redis-py
      and redis.asyncio) and the channel layer (channels_redis, redis.asyncio).
The service makes no outgoing HTTP requests, so there is nothing to instrument
there.
{%- if cookiecutter.tasks != "none" %}

Background tasks continue the trace of the request that enqueued them. The
message carries the enqueuing context as W3C headers (carrier(), added by
core.tasks), a task kept by core.outbox carries them in its row, and the worker
runs each attempt in a CONSUMER span `task <name>` whose parent is the span that
was current at the enqueue (task_span(), from core.tasks.attempt). The worker's
processes set up their own TracerProvider (setup(tasks_only=True), from
core.queue), in which only a task's span starts a trace: the library's own
polling of its broker (a Redis command or SQL statement every second or so) is
not recorded.
{%- endif %}
"""

import asyncio
import contextlib
import contextvars
import functools
import os

from django.conf import settings


def _enabled() -> bool:
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return bool(
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    )


ENABLED = _enabled()

# Requests that are not traced: the probes and Prometheus scrapes, which would
# otherwise be most traces and tell nothing.
UNTRACED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})

_provider = None
# Server spans started and not yet ended in this process (Traced): lifespan
# shutdown waits for them before the export (spans_ended()), on an event that
# the last of them sets.
_open_spans = 0
_spans_ended: asyncio.Event | None = None
# How long it waits at most: a request that never returns must not hold the
# worker's exit back.
SPANS_END_SECONDS = 2.0
# The current request's server span (Traced), whether it is recorded, its trace
# and span ids in hex, and its traceresponse header: what the response
# (answered()), core.middleware's naming and every log line of the request
# read, in one lookup. Through OpenTelemetry's context each read is
# half a dozen Python calls, and an unsampled request's cost is its calls: the
# tiny JSON made 968 calls without tracing, 102 more unsampled, 79 with this
# (counted in one process; tests/bench/notes.md, "Measured by turns").
_request_span: contextvars.ContextVar = contextvars.ContextVar("request_span")

if ENABLED:
    # Imported only when on: a service without an endpoint does not need it.
    from opentelemetry import context, propagate, trace
    from opentelemetry.trace import (
        SpanKind,
        Status,
        StatusCode,
        format_span_id,
        format_trace_id,
    )

    # The parent of a request that carries no trace context: none (a Context is
    # immutable).
    _NO_PARENT = context.Context()


{% if cookiecutter.websockets == "yes" -%}
def wrap(application, websocket_routes=()):
    """The ASGI application with a server span around each HTTP request and
    WebSocket connection; the application itself when tracing is off."""
    if not ENABLED:
        return application
    return Traced(application, websocket_routes)
{%- else -%}
def wrap(application):
    """The ASGI application with a server span around each HTTP request; the
    application itself when tracing is off."""
    if not ENABLED:
        return application
    return Traced(application)
{%- endif %}


class Traced:
    """One server span per HTTP request{% if cookiecutter.websockets == "yes" %} or WebSocket connection{% endif %}, by hand.

    Why not opentelemetry-instrumentation-asgi: measured on this service's tiny
    JSON view, it costs about 350 µs of CPU per request even when the request is
    not sampled (it decodes every header into attributes, wraps each ASGI
    message and records its metrics before the sampler has decided), two thirds
    of what the whole request costs without it. Here an unsampled request costs
    the sampler's decision and two context variables; the attributes are set
    only on a span that is recorded. The context comes from the configured
    propagators (OTEL_PROPAGATORS), and every response names its trace in a W3C
    traceresponse header, which Nginx logs (deploy/nginx/nginx.conf): core.handler
    adds it as Django sends the response (answered()).
    """

{%- if cookiecutter.websockets == "yes" %}

    def __init__(self, application, websocket_routes=()):
        self.application = application
        self.websocket_routes = websocket_routes
{%- else %}

    def __init__(self, application):
        self.application = application
{%- endif %}
        # The headers the propagators read (traceparent, tracestate, baggage).
        self.fields = {
            field.encode() for field in propagate.get_global_textmap().fields
        }

    @functools.cached_property
    def tracer(self):
        """The provider's own tracer, taken at the first request, once lifespan
        startup has set the provider up (setup()): the one trace.get_tracer()
        gives before that forwards every call."""
        return trace.get_tracer(__name__)

    def span_details(self, scope) -> tuple[str, str | None]:
        """The span's first name and route. An HTTP request's is its method:
        core.middleware renames it by its URL pattern once Django resolved it;
        the raw path never names a span."""
{%- if cookiecutter.websockets == "yes" %}
        if scope["type"] == "websocket":
            path = scope["path"].lstrip("/")
            for route in self.websocket_routes:
                if route.pattern.match(path):
                    template = str(route.pattern)
                    return f"WEBSOCKET {template}", template
            return "WEBSOCKET", None
{%- endif %}
        return scope["method"], None

    async def __call__(self, scope, receive, send):
        global _open_spans
        if scope["path"] in UNTRACED_PATHS:
            return await self.application(scope, receive, send)
        carrier = {
            name.decode(): value.decode("latin-1")
            for name, value in scope["headers"]
            if name in self.fields
        }
        name, route = self.span_details(scope)
        # Most requests carry no trace: the propagators would make the same empty
        # context from their empty carrier, at a dozen calls a request.
        parent = propagate.extract(carrier) if carrier else _NO_PARENT
        span = self.tracer.start_span(name, context=parent, kind=SpanKind.SERVER)
        _open_spans += 1
        token = context.attach(trace.set_span_in_context(span))
        recording = span.is_recording()
        current = None
        try:
            if recording:
                span.set_attributes(request_attributes(scope, route))
            ids = span.get_span_context()
            # By bytes, not by int formatting: half the cost, on every request.
            hex_ids = ids.trace_id.to_bytes(16).hex(), ids.span_id.to_bytes(8).hex()
            header = "-".join(("00", *hex_ids, f"{ids.trace_flags:02x}"))
            current = _request_span.set(
                (span, recording, hex_ids, (b"traceresponse", header.encode()))
            )
            await self.application(scope, receive, send)
        except BaseException as error:
            if recording:
                span.record_exception(error)
                span.set_status(Status(StatusCode.ERROR, type(error).__name__))
            raise
        finally:
            if current is not None:
                _request_span.reset(current)
            context.detach(token)
            span.end()
            _open_spans -= 1
            if not _open_spans and _spans_ended is not None:
                _spans_ended.set()


def request_attributes(scope, route: str | None) -> dict:
    """The semantic-convention attributes of a recorded server span: never the
    query string, nor a header's value. Nor network.protocol.version: Nginx, in
    front of every deployment, speaks HTTP/1.1 to the app whatever the client
    speaks, and each attribute costs a sampled request about 4 µs to record and
    export (tests/bench/notes.md)."""
    attributes = {
        "http.request.method": scope.get("method", "GET"),
        "url.scheme": scope.get("scheme", "http"),
    }
    if route is not None:
        attributes["http.route"] = route
    if scope.get("client"):
        attributes["client.address"] = scope["client"][0]
    return attributes


def answered(status_code: int) -> tuple[bytes, bytes] | None:
    """The current request's W3C traceresponse header, encoded for ASGI (Nginx
    logs it), as core.handler sends a response with `status_code`, which a
    recorded span takes; None outside a traced request. Here and not around the
    ASGI send: a wrapper there adds a coroutine to each message a request or
    WebSocket sends, and goes over each message's type and headers again
    (tests/bench/notes.md, "Measured by turns")."""
    current = _request_span.get(None)
    if current is None:
        return None
    span, recording, _, header = current
    if recording:
        span.set_attribute("http.response.status_code", status_code)
        if status_code >= 500:
            span.set_status(Status(StatusCode.ERROR))
    return header


def name_request(method: str, route: str | None) -> None:
    """Names the current request's span by its URL pattern (core.middleware)."""
    span, recording, _, _ = _request_span.get((None, False, None, None))
    if route is not None and recording:
        span.update_name(f"{method} {route}")
        span.set_attribute("http.route", route)


def current_ids() -> tuple[str, str] | None:
    """The (trace_id, span_id) in hex of the current request's server span (the
    one its traceresponse header names), else of the current span (a task's);
    None outside both. A line logged inside a database or Redis span of a
    request carries the request's span: those spans hold no code of the
    service's, which is where lines are logged."""
    if (current := _request_span.get(None)) is not None:
        return current[2]
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return format_trace_id(context.trace_id), format_span_id(context.span_id)


def current_trace_id() -> str | None:
    ids = current_ids() if ENABLED else None
    return ids[0] if ids else None


@contextlib.contextmanager
def untraced():
    """No span is recorded inside: a worker's own work that no request waits for
    (core.events' reader of a group), whose every Redis command would otherwise
    start a trace of its own."""
    if not ENABLED:
        yield
        return
    from opentelemetry.instrumentation.utils import suppress_instrumentation

    with suppress_instrumentation():
        yield


{% if cookiecutter.tasks != "none" -%}
def setup(*, tasks_only: bool = False) -> None:
    """Installs this process's TracerProvider and instrumentations, once; does
    nothing when tracing is off. Called at lifespan startup, in each worker, and
    with `tasks_only` in each process of the task worker that runs tasks: there
    only a task's span (task_span()) starts a trace."""
{%- else -%}
def setup() -> None:
    """Installs this process's TracerProvider and instrumentations, once; does
    nothing when tracing is off. Called at lifespan startup, in each worker."""
{%- endif %}
    global _provider
    if not ENABLED or _provider is not None:
        return
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter,
    )
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.sdk.resources import (
        SERVICE_NAME,
        OTELResourceDetector,
        Resource,
    )
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # OTEL_SERVICE_NAME or a service.name in OTEL_RESOURCE_ATTRIBUTES wins over
    # the slug: attributes given to Resource.create would win over both.
    named = SERVICE_NAME in OTELResourceDetector().detect().attributes
    resource = Resource.create({} if named else {SERVICE_NAME: settings.SERVICE_NAME})
    # The sampler comes from OTEL_TRACES_SAMPLER(_ARG), the endpoint, headers and
    # timeout from OTEL_EXPORTER_OTLP_*: the SDK reads them.
    # Flushed by lifespan shutdown only, not at exit: worker processes that
    # multiprocessing or Gunicorn started end with os._exit, which runs no
    # atexit hook, so lifespan shutdown is the one place that works for every
    # server (and the one the tests check).
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
{%- if cookiecutter.tasks != "none" %}
    if tasks_only:
        # Before any tracer is made: each takes the provider's sampler then.
        provider.sampler = _within_tasks(provider.sampler)
{%- endif %}
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _provider = provider
    RedisInstrumentor().instrument()
    engines = {database["ENGINE"] for database in settings.DATABASES.values()}
    if "django.db.backends.sqlite3" in engines:
        from opentelemetry.instrumentation.sqlite3 import SQLite3Instrumentor

        SQLite3Instrumentor().instrument()
{%- if cookiecutter.database == "postgresql" %}
    if "django.db.backends.postgresql" in engines:
        from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor

        PsycopgInstrumentor().instrument()
{%- elif cookiecutter.database == "mysql" %}
    if "django.db.backends.mysql" in engines:
        from opentelemetry.instrumentation.mysqlclient import MySQLClientInstrumentor

        from core import database_server

        MySQLClientInstrumentor().instrument()
        database_server.trace_statements(trace.get_tracer(__name__))
{%- endif %}


async def spans_ended(seconds: float = SPANS_END_SECONDS) -> None:
    """Returns once every server span of this process has ended, or after
    `seconds`. Uvicorn and Gunicorn run lifespan shutdown once every request has
    returned; Granian once its connections are closed, which can be before the
    app has returned for a client that had already gone (an event stream ending
    at the stop): that span would end after the export, and be lost."""
    global _spans_ended
    if not _open_spans:
        return
    _spans_ended = asyncio.Event()
    try:
        await asyncio.wait_for(_spans_ended.wait(), seconds)
    except TimeoutError:
        return


def shutdown() -> None:
    """Exports the spans still queued and stops the export thread (lifespan
    shutdown); blocks for at most the exporter's timeout."""
    if _provider is not None:
        _provider.shutdown()
{%- if cookiecutter.tasks != "none" %}


def _within_tasks(configured):
    """The task worker's sampler: a span outside every task's span is dropped, the
    others are sampled by the `configured` one (OTEL_TRACES_SAMPLER). A task's
    span is the one CONSUMER span there is; anything else without a parent is
    the queue library at work between tasks."""
    from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult

    class WithinTasks(Sampler):
        def should_sample(
            self,
            parent_context,
            trace_id,
            name,
            kind=None,
            attributes=None,
            links=None,
            trace_state=None,
        ):
            parent = trace.get_current_span(parent_context).get_span_context()
            if not parent.is_valid and kind != SpanKind.CONSUMER:
                return SamplingResult(Decision.DROP)
            return configured.should_sample(
                parent_context, trace_id, name, kind, attributes, links, trace_state
            )

        def get_description(self) -> str:
            return f"WithinTasks({configured.get_description()})"

    return WithinTasks()


def carrier() -> dict[str, str] | None:
    """The current context as W3C headers (traceparent, and tracestate and baggage
    when there are), for a task's message; None when tracing is off or no span is
    current, and then the message carries nothing of traces."""
    if not ENABLED:
        return None
    headers: dict[str, str] = {}
    propagate.inject(headers)
    return headers or None


@contextlib.contextmanager
def continued(headers: dict[str, str] | None):
    """Within the context that `headers` (carrier()) carry: core.outbox's relay,
    outside any request, sends a kept task in the context of the request that
    kept it, and the task continues that request's trace."""
    if not ENABLED or not headers:
        yield
        return
    token = context.attach(propagate.extract(headers))
    try:
        yield
    finally:
        context.detach(token)


@contextlib.contextmanager
def task_span(name: str, headers: dict[str, str] | None, attributes: dict):
    """The span of a task's attempt, current within: a CONSUMER span whose parent
    is the span the task was enqueued in (`headers`, from its message), a trace of
    its own without them. Yields None when tracing is off."""
    if not ENABLED:
        yield None
        return
    # Only the message's context: nothing the worker's own context may hold.
    parent = propagate.extract(headers or {}, context=context.Context())
    tracer = trace.get_tracer(__name__)
    with tracer.start_as_current_span(
        f"task {name}", context=parent, kind=SpanKind.CONSUMER, attributes=attributes
    ) as span:
        yield span


def task_ended(span, outcome: str, error: BaseException | None) -> None:
    """Records how the attempt of task_span() `span` ended: its outcome, and the
    error it failed with."""
    if span is None:
        return
    span.set_attribute("task.outcome", outcome)
    if error is not None:
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, type(error).__name__))
{%- endif %}
