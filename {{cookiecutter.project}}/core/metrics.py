"""The service's Prometheus metrics: the whole catalogue, in one place.

Every worker process writes its values to memory-mapped files in
PROMETHEUS_MULTIPROC_DIR (prometheus_client's multiprocess mode, set by bin/serve),
and /metrics adds them up across workers (core.exposition). Updating a value is a
store into shared memory under a lock: no I/O, nothing that waits. Without that
variable (tests, `manage.py shell`) the values live in this process.

Gauges are "live" so that a dead worker's values disappear with it; counters and
histograms of dead workers are kept, so that totals never go down when a worker
is recycled. Labels take bounded values only: the URL pattern, never the path.
"""

import functools
import platform

import django
from django.conf import settings
from prometheus_client import Counter, Gauge, Histogram

from config import template

# Seconds. Latency objectives are judged at 0.1, 0.25 and 0.5 s: keep those bounds.
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CONNECTION_BUCKETS = (0.1, 1.0, 10.0, 60.0, 300.0, 1800.0, 3600.0, 4 * 3600.0)
QUERY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

BUILD_INFO = Gauge(
    "django_build_info",
    "Always 1; labels name the running build and the platform template it came from.",
    ["version", "server", "django", "python", "template_version", "template_date"],
    multiprocess_mode="livemax",
)
# A label cannot be computed with: this makes "how far behind" a PromQL question.
TEMPLATE_COMMIT_TIMESTAMP = Gauge(
    "django_template_commit_timestamp_seconds",
    "When the platform template's commit this build came from was made (0: unknown).",
    multiprocess_mode="livemax",
)
WORKERS = Gauge(
    "django_workers", "Worker processes serving requests.", multiprocess_mode="livesum"
)
WORKER_STARTS = Counter("django_worker_starts", "Worker processes started.")
WORKER_STOPS = Counter(
    "django_worker_stops", "Worker processes that finished a graceful shutdown."
)
WORKER_RECYCLES = Counter(
    "django_worker_recycles",
    "Workers that stopped themselves to be replaced, by reason (core.recycling).",
    ["reason"],
)
RECYCLE_REASONS = ("requests", "memory")
PROCESS_CPU = Counter(
    "django_process_cpu_seconds", "CPU time (user and system) used by workers."
)
PROCESS_MEMORY = Gauge(
    "django_process_resident_memory_bytes",
    "Resident memory of the workers.",
    multiprocess_mode="livesum",
)
EVENT_LOOP_LAG = Histogram(
    "django_event_loop_lag_seconds",
    "How late the event loop ran a callback that was due.",
    buckets=LAG_BUCKETS,
)
GC_PAUSE = Histogram(
    "django_worker_gc_pause_seconds",
    "How long each garbage collection stopped the worker (core.collector).",
    ["generation"],
    buckets=LAG_BUCKETS,
)
GC_GENERATIONS = ("0", "1", "2")

HTTP_REQUESTS = Counter(
    "django_http_requests",
    "HTTP requests answered by Django, by URL pattern, method and status.",
    ["route", "method", "status"],
)
HTTP_DURATION = Histogram(
    "django_http_request_duration_seconds",
    "Time until the response headers, by URL pattern, method and status class.",
    ["route", "method", "status_class"],
    buckets=REQUEST_BUCKETS,
)
HTTP_IN_FLIGHT = Gauge(
    "django_http_requests_in_flight",
    "HTTP requests Django is working on.",
    multiprocess_mode="livesum",
)
RATE_LIMITED = Counter(
    "django_http_rate_limited",
    "Requests answered 429 because their caller was over API_RATE_LIMIT_REQUESTS "
    "(core.ratelimit), by the kind of token: api_key or oidc.",
    ["kind"],
)
HTTP_EXCEPTIONS = Counter(
    "django_http_exceptions",
    "Exceptions views did not handle, by class.",
    ["type"],
)

CONNECTION_TYPES = ("http", "websocket", "sse")
CONNECTIONS = Gauge(
    "django_connections_active",
    "Open ASGI connections: http (a request until its response ends), websocket, "
    "sse (an event stream).",
    ["type"],
    multiprocess_mode="livesum",
)
CONNECTION_DURATION = Histogram(
    "django_connection_duration_seconds",
    "How long ASGI connections stayed open, by type.",
    ["type"],
    buckets=CONNECTION_BUCKETS,
)
CONNECTIONS_REFUSED = Counter(
    "django_connections_refused",
    "Long-lived connections a worker refused because it held its maximum of their "
    "type (SSE_MAX_STREAMS, WEBSOCKET_MAX_CONNECTIONS): sse, websocket.",
    ["type"],
)
REQUEST_THREAD_WAITS = Counter(
    "django_request_thread_waits",
    "Requests whose sync code waited for a request thread: the worker had started "
    "its most (REQUEST_THREADS), all busy (core.handler).",
)
WEBSOCKET_CONNECTS = Counter(
    "django_websocket_connects", "WebSocket connections accepted."
)
WEBSOCKET_DISCONNECTS = Counter(
    "django_websocket_disconnects",
    "Accepted WebSocket connections that ended, by close code class.",
    ["code_class"],
)
WEBSOCKET_MESSAGES = Counter(
    "django_websocket_messages",
    "WebSocket messages, by direction (in: from the client).",
    ["direction"],
)
SSE_STREAMS = Counter("django_sse_streams", "Server-sent event streams opened.")
SSE_EVENTS = Counter(
    "django_sse_events", "Server-sent events written, keep-alives not included."
)

DB_QUERY_DURATION = Histogram(
    "django_db_query_duration_seconds",
    "Database query time, by connection alias and statement kind.",
    ["alias", "operation"],
    buckets=QUERY_BUCKETS,
)
DB_ERRORS = Counter(
    "django_db_errors",
    "Database queries that failed, by connection alias and exception class.",
    ["alias", "type"],
)
# The connection pools (core.reads' asyncio pool for reads, Django's for writes
# and tasks), sampled once a second (core.sampler), and the waits for them.
DB_POOL_CONNECTIONS = Gauge(
    "django_db_pool_connections",
    "Connections of the pool, by alias, pool (async, sync) and state (busy, idle).",
    ["alias", "pool", "state"],
    multiprocess_mode="livesum",
)
DB_POOL_MAX = Gauge(
    "django_db_pool_max_connections",
    "The most connections the pool opens, by alias and pool.",
    ["alias", "pool"],
    multiprocess_mode="livesum",
)
DB_POOL_WAITING = Gauge(
    "django_db_pool_waiting",
    "Requests waiting for a connection of the pool, by alias and pool.",
    ["alias", "pool"],
    multiprocess_mode="livesum",
)
DB_POOL_WAIT = Histogram(
    "django_db_pool_wait_seconds",
    "Time a read waited for a connection of the async pool, by alias.",
    ["alias"],
    buckets=QUERY_BUCKETS,
)
DB_UNAVAILABLE = Counter(
    "django_db_unavailable",
    "Requests answered 503 because the database could not serve them, by reason "
    "(core.database.unavailable): pool_timeout, statement_timeout, connection, locked.",
    ["reason"],
)
CACHE_REQUESTS = Counter(
    "django_cache_requests", "Cache lookups, by result (hit or miss).", ["result"]
)
FOLLOWUPS_FAILED = Counter(
    "django_followups_failed",
    "What a committed write sets off (core.followups) that failed, by step "
    "(publish): the write was answered as a success all the same.",
    ["step"],
)
CACHE_ERRORS = Counter(
    "django_cache_errors",
    "Cache operations that failed because Redis was down or too slow, by operation "
    "(get, set, delete, ...): a failed get counts as a miss too.",
    ["operation"],
)

{% if cookiecutter.tasks != "none" -%}
# Background tasks, by task name (core.tasks). Enqueued counts where a task is
# handed to the broker (web or worker); the others count in the worker. A failed
# attempt that the queue will try again is "retried"; the last one is "failed".
TASK_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)
TASKS_ENQUEUED = Counter(
    "django_tasks_enqueued", "Tasks handed to the broker, by task.", ["task"]
)
TASKS_DEFERRED = Counter(
    "django_tasks_deferred",
    "Tasks the broker did not take after their write committed, kept in the "
    "database for the task worker's relay (core.outbox), by task.",
    ["task"],
)
TASKS_RELAYED = Counter(
    "django_tasks_relayed",
    "Kept tasks the relay has handed to the broker since (core.outbox), by task.",
    ["task"],
)
TASKS_STARTED = Counter(
    "django_tasks_started", "Task attempts a worker started, by task.", ["task"]
)
TASKS_SUCCEEDED = Counter(
    "django_tasks_succeeded", "Task attempts that succeeded, by task.", ["task"]
)
TASKS_RETRIED = Counter(
    "django_tasks_retried",
    "Task attempts that failed and will be tried again, by task.",
    ["task"],
)
TASKS_FAILED = Counter(
    "django_tasks_failed",
    "Tasks whose last attempt failed, by task and exception class.",
    ["task", "type"],
)
TASKS_RUNNING = Gauge(
    "django_tasks_running",
    "Task attempts running now, by task.",
    ["task"],
    multiprocess_mode="livesum",
)
TASK_DURATION = Histogram(
    "django_task_duration_seconds",
    "Time a task attempt ran, by task and outcome (succeeded, retried, failed, "
    "dead_lettered).",
    ["task", "outcome"],
    buckets=TASK_BUCKETS,
)
TASKS_DEAD_LETTERED = Counter(
    "django_tasks_dead_lettered",
    "Tasks delivered more than TASK_MAX_DELIVERIES times without an attempt "
    "finishing (their worker died each time), set aside instead of run, by task.",
    ["task"],
)
# The queue depth is read from the broker when core.task_worker answers a scrape:
# django_task_queue_depth, a gauge of no process; so is the count of dead-lettered
# tasks waiting for someone (manage.py dead_letters), django_task_dead_letters.

{% endif -%}
METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"}
)
UNMATCHED_ROUTE = "<unmatched>"
OPERATIONS = frozenset({"select", "insert", "update", "delete"})

# WebSocket close codes (RFC 6455 7.4, IANA registry), by what they tell an operator.
_CLOSE_CODE_CLASSES = {
    1000: "normal",
    1001: "going_away",
    1005: "abnormal",
    1006: "abnormal",
    1009: "too_big",
    1011: "server_error",
    1012: "restart",
    1013: "restart",
}


# The children of the per-request metrics, looked up once per label set: labels()
# takes a lock and checks its arguments on every call. Label values are bounded
# (see above), so these caches are too.
@functools.cache
def request_counter(route: str, method: str, status: str):
    return HTTP_REQUESTS.labels(route, method, status)


@functools.cache
def request_timer(route: str, method: str, status_class: str):
    return HTTP_DURATION.labels(route, method, status_class)


def method_label(method: str | None) -> str:
    return method if method in METHODS else "other"


def operation_label(sql: str) -> str:
    verb = sql.lstrip(" (").split(None, 1)[0].lower() if sql.strip() else ""
    return verb if verb in OPERATIONS else "other"


def close_code_class(code: int) -> str:
    if code in _CLOSE_CODE_CLASSES:
        return _CLOSE_CODE_CLASSES[code]
    if 1002 <= code <= 1015:
        return "protocol_error"  # 1002, 1003, 1007, 1008 (policy), 1010, 1014, 1015
    if 3000 <= code <= 4999:
        return "application"
    return "other"


def observe_pool(alias: str, pool: str, stats: dict) -> None:
    """Sets the pool gauges from psycopg_pool's get_stats()."""
    size, idle = stats.get("pool_size", 0), stats.get("pool_available", 0)
    DB_POOL_CONNECTIONS.labels(alias, pool, "idle").set(idle)
    DB_POOL_CONNECTIONS.labels(alias, pool, "busy").set(size - idle)
    DB_POOL_MAX.labels(alias, pool).set(stats.get("pool_max", 0))
    DB_POOL_WAITING.labels(alias, pool).set(stats.get("requests_waiting", 0))


def worker_started() -> None:
    """Called once per worker when the server starts it (ASGI lifespan)."""
    BUILD_INFO.labels(
        settings.SERVICE_VERSION,
        settings.SERVER,
        django.get_version(),
        platform.python_version(),
        template.VERSION,
        template.DATE,
    ).set(1)
    TEMPLATE_COMMIT_TIMESTAMP.set(template.TIMESTAMP)
    WORKERS.set(1)
    WORKER_STARTS.inc()
    # Exposed at 0 from the start: a recycle then shows as an increase, and a
    # worker that has not collected yet shows that it has not.
    for reason in RECYCLE_REASONS:
        WORKER_RECYCLES.labels(reason)
    for generation in GC_GENERATIONS:
        GC_PAUSE.labels(generation)


def worker_stopped() -> None:
    """Called at the end of a graceful shutdown; a crashed worker never gets here."""
    WORKERS.set(0)
    WORKER_STOPS.inc()
