"""Settings of {{ cookiecutter.project }}.

Everything that differs between environments comes from environment variables
(12-factor); the defaults are the production ones. A local `.env` file, written
by the template for development (it sets DJANGO_DEBUG=true), fills in variables
the environment lacks, unless DJANGO_READ_DOT_ENV=false: bin/serve and the
container image make that the default, so that a server never takes a stray
`.env` beside it for its configuration.
"""

import json
from pathlib import Path

import environ

from core.middleware_paths import MiddlewarePaths

BASE_DIR = Path(__file__).resolve().parent.parent
SERVICE_NAME = "{{ cookiecutter.project }}"
SERVICE_VERSION = "0.1.0"
SERVER = "{{ cookiecutter.server }}"
# The database this service was generated for; SQLite still runs it in tests.
DATABASE_VENDOR = "{{ cookiecutter.database }}"

env = environ.Env()
if env.bool("DJANGO_READ_DOT_ENV", default=True):
    environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

DEBUG = env.bool("DJANGO_DEBUG", default=False)
SECRET_KEY = env.str("DJANGO_SECRET_KEY")
# Earlier keys, still accepted for signatures (not used to sign): rotate by moving
# the old key here and setting a new DJANGO_SECRET_KEY.
SECRET_KEY_FALLBACKS = env.list("DJANGO_SECRET_KEY_FALLBACKS", default=[])
# The local names are allowed hosts by default only with DEBUG. A deployment
# that lists them (the chart and the Ansible role do: probes and Nginx's metrics
# listener send Host: localhost) still gets no WebSocket from a page they serve.
LOCAL_HOSTS = ["localhost", "127.0.0.1", "[::1]"]
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=LOCAL_HOSTS if DEBUG else [])

INSTALLED_APPS = [
{%- if cookiecutter.websockets == "yes" %}
    # Sessions and users authenticate WebSocket connections (channels.auth).
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
{%- endif %}
    "django.contrib.staticfiles",
    "channels",
    "core",
    "items",
]

# Every entry must run natively in the event loop: core.checks reports any that
# would switch threads on each request. Django's deploy checks find its stock
# classes in this list by their subclasses (core.middleware_paths).
MIDDLEWARE = MiddlewarePaths(
    [
        "core.middleware.RequestContextMiddleware",
        "core.middleware.MetricsMiddleware",
        "core.middleware.SecurityMiddleware",
        "core.middleware.XFrameOptionsMiddleware",
        "core.middleware.CommonMiddleware",
        "core.middleware.CsrfViewMiddleware",
    ]
)

ROOT_URLCONF = "config.urls"
ASGI_APPLICATION = "config.asgi.application"
WSGI_APPLICATION = None

# Database: DATABASE_URL, e.g. postgres://user:pass@host:5432/name,
# mysql://user:pass@host:3306/name or
# sqlite:////var/lib/{{ cookiecutter.project }}/db.sqlite3.
DATABASES = {
    "default": env.db_url(
        "DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}"
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # Each worker process has two pools of these sizes: core.reads' asyncio pool
    # for reads and Django's psycopg pool for writes and tasks; persistent
    # connections must stay off with them. A request that finds no free
    # connection within the pool timeout gets a 503 with Retry-After (core.api).
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"]["OPTIONS"] = {
        "connect_timeout": env.int("DATABASE_CONNECT_TIMEOUT", default=5),
        # The server cancels a statement after this long (a 503, as above).
        "options": "-c statement_timeout={}".format(
            int(env.float("DATABASE_STATEMENT_TIMEOUT", default=30.0) * 1000)
        ),
        "pool": {
            # core.apps adds a check of each connection before it is lent
            # (core.database.pool_check), so that no request gets a dead one.
            "min_size": env.int("DATABASE_POOL_MIN_SIZE", default=2),
            "max_size": env.int("DATABASE_POOL_MAX_SIZE", default=10),
            "timeout": env.float("DATABASE_POOL_TIMEOUT", default=5.0),
        },
    }
elif DATABASES["default"]["ENGINE"] == "django.db.backends.mysql":
    # Django's MySQL backend has no pool. Each of core.handler's kept request
    # threads (and each task worker thread) keeps its connection for
    # DATABASE_CONN_MAX_AGE seconds, below the server's wait_timeout, and Django
    # pings it before the first query of a request that reuses it
    # (CONN_HEALTH_CHECKS): one the server dropped is replaced, not a failed
    # request. The threads are bounded (core.handler), and so are these.
    DATABASES["default"]["CONN_MAX_AGE"] = env.int("DATABASE_CONN_MAX_AGE", default=300)
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    # A statement running longer is stopped (a 503): on MariaDB every statement,
    # on MySQL every SELECT (core.database_server.time_limit, set on each new
    # connection once it is known which of the two the server is).
    DATABASE_STATEMENT_TIMEOUT = env.float("DATABASE_STATEMENT_TIMEOUT", default=30.0)
    DATABASES["default"]["OPTIONS"] = {
        "charset": "utf8mb4",
        # What Django recommends on MySQL (and MariaDB's default is REPEATABLE READ).
        "isolation_level": "read committed",
        "connect_timeout": env.int("DATABASE_CONNECT_TIMEOUT", default=5),
        # Strict mode: a value that does not fit is an error, never truncated.
        "init_command": "SET SESSION sql_mode='TRADITIONAL,NO_ENGINE_SUBSTITUTION'",
    }
    # core.reads' asyncio pool (asyncmy), one per worker process: its sizes and
    # the wait for a free connection (a 503 with Retry-After after it).
    DATABASE_READ_POOL = {
        "min_size": env.int("DATABASE_POOL_MIN_SIZE", default=2),
        "max_size": env.int("DATABASE_POOL_MAX_SIZE", default=10),
        "timeout": env.float("DATABASE_POOL_TIMEOUT", default=5.0),
    }
elif DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets readers run beside the writer; IMMEDIATE takes the write lock at
    # BEGIN so that concurrent transactions wait instead of failing to upgrade.
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": env.float("DATABASE_BUSY_TIMEOUT", default=5.0),
    }
    # Opening a SQLite connection (Django registers its functions, the PRAGMAs
    # run) costs more CPU than a read: each of core.handler's kept request
    # threads keeps its own, and Django closes it after this long, between requests.
    DATABASES["default"]["CONN_MAX_AGE"] = env.int("DATABASE_CONN_MAX_AGE", default=600)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Redis carries the channel layer (WebSocket and SSE fan-out across worker
# processes) and the cache. Without it both stay inside one process.
REDIS_URL = env.str("REDIS_URL", default="")
CACHE_TIMEOUT = env.float("CACHE_TIMEOUT", default=0.5)
# Per worker: one is the layer's blocking read; the rest serve group joins and
# sends, which wait up to the timeout for a free one (core.layers).
CHANNEL_LAYER_MAX_CONNECTIONS = env.int("CHANNEL_LAYER_MAX_CONNECTIONS", default=50)
CHANNEL_LAYER_POOL_TIMEOUT = env.float("CHANNEL_LAYER_POOL_TIMEOUT", default=5.0)
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "core.layers.RedisChannelLayer",
            "CONFIG": {
                "hosts": [
                    {
                        "address": REDIS_URL,
                        # The layer waits on Redis with blocking pops of a few
                        # seconds; redis-py 8 would otherwise time out every
                        # read after 5 s.
                        "socket_timeout": None,
                        "max_connections": CHANNEL_LAYER_MAX_CONNECTIONS,
                        "timeout": CHANNEL_LAYER_POOL_TIMEOUT,
                    }
                ],
                "prefix": f"{SERVICE_NAME}:asgi",
            },
        }
    }
    CACHES = {
        "default": {
            "BACKEND": "core.cache.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": SERVICE_NAME,
            # Values are stored as JSON (core.cache.JSONSerializer), never pickled.
            # A Redis that does not answer within this long is a cache miss
            # (core.cache), not a request held up.
            "OPTIONS": {
                "socket_connect_timeout": CACHE_TIMEOUT,
                "socket_timeout": CACHE_TIMEOUT,
            },
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "core.layers.InMemoryChannelLayer"}}
    CACHES = {"default": {"BACKEND": "core.cache.LocMemCache"}}

{% if cookiecutter.tasks != "none" -%}
# Background tasks (core.queue: {{ cookiecutter.tasks }}). Services that share a
# broker each need their own queue name.
TASK_QUEUE = env.str("TASK_QUEUE", default=SERVICE_NAME)
# Seconds before a failed task's first retry; each further retry waits twice as long.
TASK_RETRY_DELAY = env.float("TASK_RETRY_DELAY", default=10.0)
# Deliveries of a task attempt whose worker died each time (killed, out of memory)
# before the next one is dead-lettered instead of run (core.tasks).
TASK_MAX_DELIVERIES = env.int("TASK_MAX_DELIVERIES", default=3)
# Seconds between the task worker's sends of the tasks the broker did not take
# when their write committed (core.outbox).
OUTBOX_RELAY_SECONDS = env.float("OUTBOX_RELAY_SECONDS", default=5.0)
# The queue library's own settings (config/task_queue.py), which read the above.
from config.task_queue import *  # noqa: E402, F403

{% endif -%}
# Seconds an item read by id stays cached; writes through the API drop it at once.
ITEM_CACHE_SECONDS = env.int("ITEM_CACHE_SECONDS", default=30)
# How long the answer to a create's Idempotency-Key is kept (core.idempotency).
IDEMPOTENCY_KEY_HOURS = env.int("IDEMPOTENCY_KEY_HOURS", default=24)
# Readiness probes give each dependency this long before reporting it down.
READINESS_TIMEOUT = env.float("READINESS_TIMEOUT", default=2.0)
# Seconds between SSE keep-alive comments; below proxies' idle read timeouts.
SSE_KEEPALIVE_SECONDS = env.float("SSE_KEEPALIVE_SECONDS", default=15.0)
# Event streams a worker process serves at once; more are refused with 503
# (core.connections). Each one ends after SSE_MAX_SECONDS, and its client
# reconnects; the worker's one channel in the group joins it again once that old
# (core.events): below channels_redis's group_expiry (24 h), after which a
# member stops receiving events without a word.
SSE_MAX_STREAMS = env.int("SSE_MAX_STREAMS", default=1000)
SSE_MAX_SECONDS = env.float("SSE_MAX_SECONDS", default=3600.0)
# When a worker stops (a deploy, or its recycling), each of its event streams and
# WebSockets is told to reconnect after a random delay of up to this long
# (core.shutdown): its clients come back to the other workers spread out, not
# all at once.
RECONNECT_SPREAD_SECONDS = env.float("RECONNECT_SPREAD_SECONDS", default=5.0)
# A worker that has served MAX_REQUESTS (plus up to MAX_REQUESTS_JITTER), or whose
# resident memory stays at or over WORKER_MAX_RSS_MB for WORKER_MAX_RSS_SECONDS,
# stops itself as a deploy would stop it, and its server starts a new one
# (core.recycling); 0 turns each off. bin/serve sets them.
MAX_REQUESTS = env.int("MAX_REQUESTS", default=0)
MAX_REQUESTS_JITTER = env.int("MAX_REQUESTS_JITTER", default=0)
WORKER_MAX_RSS_MB = env.int("WORKER_MAX_RSS_MB", default=0)
WORKER_MAX_RSS_SECONDS = env.int("WORKER_MAX_RSS_SECONDS", default=30)
# The garbage collector's thresholds in each worker (core.collector): the first
# is higher than Python's, so that a worker holding many connections stops less
# often for a full collection.
GC_THRESHOLDS = env.str("GC_THRESHOLDS", default="10000,10,10")
# Events of each group kept for streams that reconnect with Last-Event-ID
# (core.events): in Redis when REDIS_URL is set, in memory otherwise.
SSE_REPLAY_EVENTS = env.int("SSE_REPLAY_EVENTS", default=1000)
# What one request of the export sends at most, in rows and in seconds; it then
# ends with the URL that goes on from there (items.views.ItemExport).
EXPORT_MAX_ROWS = env.int("EXPORT_MAX_ROWS", default=100_000)
EXPORT_MAX_SECONDS = env.float("EXPORT_MAX_SECONDS", default=60.0)
# Threads a worker process runs requests' sync code in (the ORM's writes,
# sync_to_async), one request's at a time each (core.handler); more requests wait
# for one. Above the database pool (DATABASE_POOL_MAX_SIZE on PostgreSQL), so that
# sync code that queries nothing is not held up behind requests that wait for a
# connection.
REQUEST_THREADS = env.int("REQUEST_THREADS", default=32)
# Who may call the API (core.auth): a bearer token, a service API key
# (`manage.py issue_api_key`) or an OIDC access token, is required for every
# write, for the export, and for reads too with API_AUTH_READS.
API_AUTH_READS = env.bool("API_AUTH_READS", default=False)
# Requests each caller (token) may send per window (core.ratelimit), counted in
# Redis across processes and pods when REDIS_URL is set; 0 turns it off. Nginx's
# per-address limits come first.
API_RATE_LIMIT_REQUESTS = env.int("API_RATE_LIMIT_REQUESTS", default=6000)
API_RATE_LIMIT_SECONDS = env.int("API_RATE_LIMIT_SECONDS", default=60)
# OIDC access tokens are accepted when OIDC_ISSUER is set: JWTs that this issuer
# signed with a key of its JWKS (OIDC_JWKS_URL, or the jwks_uri of the issuer's
# discovery document) in one of OIDC_ALGORITHMS, for OIDC_AUDIENCE, unexpired.
OIDC_ISSUER = env.str("OIDC_ISSUER", default="")
OIDC_AUDIENCE = env.str("OIDC_AUDIENCE", default="")
OIDC_JWKS_URL = env.str("OIDC_JWKS_URL", default="")
OIDC_ALGORITHMS = env.list("OIDC_ALGORITHMS", default=["RS256"])
# Clock skew allowed on exp and nbf.
OIDC_LEEWAY_SECONDS = env.int("OIDC_LEEWAY_SECONDS", default=30)
# A token signed by a key id the cached JWKS lacks fetches it again, at most
# this often: a flood of made-up key ids cannot make the service flood the issuer.
OIDC_JWKS_REFETCH_SECONDS = env.float("OIDC_JWKS_REFETCH_SECONDS", default=30.0)
# The JWKS is fetched again after this long in any case (the issuer rotated keys).
OIDC_JWKS_MAX_AGE_SECONDS = env.float("OIDC_JWKS_MAX_AGE_SECONDS", default=3600.0)
# Largest JWKS document read; a bigger one is the issuer's fault, not a key set.
OIDC_JWKS_MAX_BYTES = 1024 * 1024
# Answers to the issuer's discovery and JWKS requests wait at most this long.
OIDC_TIMEOUT_SECONDS = env.float("OIDC_TIMEOUT_SECONDS", default=5.0)
{%- if cookiecutter.websockets == "yes" %}
# A WebSocket opened with an API key checks every this often that the key is
# still valid, and is closed with 4401 once it is not.
WEBSOCKET_TOKEN_CHECK_SECONDS = env.float("WEBSOCKET_TOKEN_CHECK_SECONDS", default=60.0)
{%- endif %}
# Largest JSON body the API parses; Nginx refuses larger ones first.
API_MAX_BODY_BYTES = env.int("API_MAX_BODY_BYTES", default=64 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = API_MAX_BODY_BYTES
{%- if cookiecutter.websockets == "yes" %}
# Largest WebSocket message a consumer accepts; larger ones close with 1009.
WEBSOCKET_MAX_MESSAGE_BYTES = env.int("WEBSOCKET_MAX_MESSAGE_BYTES", default=16 * 1024)
# WebSockets a worker process holds at once, and how long each one lives before
# it is closed with 4000 (reconnect): as SSE_MAX_STREAMS and SSE_MAX_SECONDS.
WEBSOCKET_MAX_CONNECTIONS = env.int("WEBSOCKET_MAX_CONNECTIONS", default=1000)
WEBSOCKET_MAX_SECONDS = env.float("WEBSOCKET_MAX_SECONDS", default=3600.0)
# The pages a WebSocket may be opened from (Origin; host patterns as in
# ALLOWED_HOSTS, config/asgi.py): the allowed hosts, without the local names
# unless DEBUG. A page on a client's own localhost is not this service's.
WEBSOCKET_ALLOWED_ORIGINS = env.list(
    "DJANGO_WEBSOCKET_ALLOWED_ORIGINS",
    default=[host for host in ALLOWED_HOSTS if DEBUG or host not in LOCAL_HOSTS],
)
{%- endif %}

# Security: production values unless DEBUG. TLS ends at the edge proxy, which
# sets X-Forwarded-Proto; the app server trusts it only from that proxy.
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env.bool("DJANGO_SECURE_SSL_REDIRECT", default=not DEBUG)
# Probes and Prometheus come over plain HTTP from inside the cluster or host;
# a redirect to https would fail every probe and scrape.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
SECURE_HSTS_SECONDS = env.int(
    "DJANGO_SECURE_HSTS_SECONDS", default=0 if DEBUG else 31_536_000
)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool(
    "DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", default=True
)
SECURE_HSTS_PRELOAD = env.bool("DJANGO_SECURE_HSTS_PRELOAD", default=True)
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_SECURE = not DEBUG
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_SECURE = not DEBUG
{%- if cookiecutter.tasks == "django-q2" and cookiecutter.database == "mysql" %}
SILENCED_SYSTEM_CHECKS = [
    # django-q2's task table has an index with a condition, of which MySQL makes
    # a plain index: the same rows found, by a larger index.
    "models.W037",
]
{%- endif %}
# A refused CSRF check answers JSON, as every other error (core.api).
CSRF_FAILURE_VIEW = "core.api.csrf_failure"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = env.path("DJANGO_STATIC_ROOT", default=BASE_DIR / "staticfiles")

# One JSON log format for Django and for the server's own lines: bin/serve hands
# the same file to the server.
LOGGING = json.loads((BASE_DIR / "config" / "logging.json").read_text())
LOGGING["root"]["level"] = env.str("LOG_LEVEL", default="INFO").upper()
# Errors to Sentry (core.errors): off, and sentry-sdk never imported, while
# SENTRY_DSN is empty. The DSN is a credential: it comes from a Secret or a vault.
SENTRY_DSN = env.str("SENTRY_DSN", default="")
SENTRY_ENVIRONMENT = env.str("SENTRY_ENVIRONMENT", default="production")
