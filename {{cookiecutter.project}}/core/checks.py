"""System checks that keep the request path async, the API documented and the
deploy settings safe."""

import inspect
from urllib.parse import urlsplit

from django.conf import settings
from django.core import signals
from django.core.checks import Error, Tags, Warning, register
from django.core.checks.security import base as security_checks
from django.core.exceptions import ImproperlyConfigured
from django.utils.deprecation import MiddlewareMixin
from django.utils.module_loading import import_string

from core import auth, collector, handler, openapi
from core.middleware import InlineHooksMixin

# Hooks Django wraps in sync_to_async, on every request, when they are not coroutines.
PER_REQUEST_HOOKS = ("process_view", "process_template_response")


def _thread_switches(middleware) -> list[str]:
    """Why this middleware would leave the event loop on every request."""
    if not getattr(middleware, "async_capable", False):
        return ["it is not async-capable, so Django runs it in a thread"]
    reasons = []
    if (
        inspect.isclass(middleware)
        and issubclass(middleware, MiddlewareMixin)
        and not issubclass(middleware, InlineHooksMixin)
    ):
        for hook in ("process_request", "process_response"):
            if hasattr(middleware, hook):
                reasons.append(f"MiddlewareMixin runs its {hook} in a thread")
    for hook in PER_REQUEST_HOOKS:
        method = getattr(middleware, hook, None)
        if method is not None and not inspect.iscoroutinefunction(method):
            reasons.append(f"its synchronous {hook} runs in a thread")
    return reasons


@register(Tags.compatibility)
def check_middleware_stays_async(app_configs, **kwargs):
    warnings = []
    for path in settings.MIDDLEWARE:
        for reason in _thread_switches(import_string(path)):
            warnings.append(
                Warning(
                    f"{path} switches threads on every request: {reason}.",
                    hint="Use native async middleware (see core.middleware).",
                    obj=path,
                    id="core.W001",
                )
            )
    return warnings


@register(Tags.compatibility)
def check_request_signals_stay_async(app_configs, **kwargs):
    """Synchronous receivers of request_started/request_finished that are not
    Django's own: core.handler then runs the signal in a thread on every request."""
    warnings = []
    for signal, name, known in (
        (signals.request_started, "request_started", handler.STARTED_IN_REQUEST_THREAD),
        (signals.request_finished, "request_finished", handler.FINISHED_ANYWHERE),
    ):
        sync_receivers, _ = handler.receivers(signal, handler.ASGIHandler)
        for receiver in sync_receivers:
            if receiver not in known:
                path = f"{receiver.__module__}.{receiver.__qualname__}"
                warnings.append(
                    Warning(
                        f"{path} receives {name} synchronously: every request "
                        "switches threads to run it.",
                        hint="Make the receiver a coroutine function.",
                        obj=path,
                        id="core.W005",
                    )
                )
    return warnings


@register(Tags.urls)
def check_api_is_documented(app_configs, **kwargs):
    """/api/openapi.json is built from every route under /api: each must be an
    ApiView whose handlers declare their @operation."""
    try:
        openapi.build()
    except ImproperlyConfigured as exc:
        return [
            Error(
                f"The API's OpenAPI document cannot be built: {exc}.",
                hint="Declare each handler of an ApiView with core.api.operation "
                "(routes another view serves are left out of the document).",
                id="core.E001",
            )
        ]
    return []


@register(deploy=True)
def check_database_matches_service(app_configs, **kwargs):
    engine = settings.DATABASES["default"]["ENGINE"]
    vendor = settings.DATABASE_VENDOR
    if vendor != "sqlite" and engine != f"django.db.backends.{vendor}":
        scheme = {"postgresql": "postgres", "mysql": "mysql"}[vendor]
        return [
            Warning(
                f"This service was generated for {vendor} but DATABASE_URL "
                f"selects {engine}.",
                hint=f"Set DATABASE_URL={scheme}://... in production.",
                id="core.W003",
            )
        ]
    return []


@register(deploy=True)
def check_channel_layer_is_shared(app_configs, **kwargs):
    if not settings.REDIS_URL:
        return [
            Warning(
                "REDIS_URL is not set: the channel layer and cache live inside one "
                "process, so events published by one worker never reach clients of "
                "another.",
                hint="Set REDIS_URL in production.",
                id="core.W004",
            )
        ]
    return []


@register(Tags.security, deploy=True)
def check_secret_keys_are_strong(app_configs, **kwargs):
    """Django's security.W009 and W025, as an error: a guessable key lets anyone
    forge what the service signs. Django's own test of a key, so its thresholds."""
    if settings.DEBUG:
        return []
    keys = {"DJANGO_SECRET_KEY": settings.SECRET_KEY} | {
        f"DJANGO_SECRET_KEY_FALLBACKS[{index}]": key
        for index, key in enumerate(settings.SECRET_KEY_FALLBACKS)
    }
    return [
        Error(
            f"{name} is too weak: it needs at least "
            f"{security_checks.SECRET_KEY_MIN_LENGTH} characters, "
            f"{security_checks.SECRET_KEY_MIN_UNIQUE_CHARACTERS} of them different, "
            f"and no '{security_checks.SECRET_KEY_INSECURE_PREFIX}' prefix.",
            hint="Generate one: python -c 'import secrets; "
            "print(secrets.token_urlsafe(50))'",
            id="core.E002",
        )
        for name, key in keys.items()
        if not security_checks._check_secret_key(key)
    ]


# Per-process caps that a value below 1 would turn into a worker that never
# serves: every request with sync code, every stream, every WebSocket would wait
# or be refused.
CAPS = (
    "REQUEST_THREADS",
    "SSE_MAX_STREAMS",
{%- if cookiecutter.websockets == "yes" %}
    "WEBSOCKET_MAX_CONNECTIONS",
{%- endif %}
)


@register()
def check_caps_are_positive(app_configs, **kwargs):
    return [
        Error(
            f"{name} is {getattr(settings, name)}: it must be at least 1.",
            id="core.E003",
        )
        for name in CAPS
        if getattr(settings, name) < 1
    ]


@register()
def check_channel_layer_pool(app_configs, **kwargs):
    """The layer's blocking read holds one of the pool's connections (core.layers):
    with one in all, every group join and send would wait for it in vain."""
    size = settings.CHANNEL_LAYER_MAX_CONNECTIONS
    if size >= 2:
        return []
    return [
        Error(
            f"CHANNEL_LAYER_MAX_CONNECTIONS is {size}: it must be at least 2"
            " (one is the channel layer's blocking read).",
            id="core.E006",
        )
    ]


@register()
def check_gc_thresholds(app_configs, **kwargs):
    """A worker would refuse to start with them (core.collector)."""
    try:
        collector.thresholds()
    except ImproperlyConfigured as exc:
        return [Error(str(exc), id="core.E005")]
    return []


@register(Tags.security)
def check_oidc_settings(app_configs, **kwargs):
    """What core.auth needs to trust an access token: an audience (a token for
    another service must not open this one), algorithms whose keys are public,
    and keys fetched over TLS (plain HTTP only from this machine, as in tests)."""
    if not settings.OIDC_ISSUER:
        return []
    problems = []
    if not settings.OIDC_AUDIENCE:
        problems.append("OIDC_AUDIENCE is not set")
    if not settings.OIDC_ALGORITHMS:
        problems.append("OIDC_ALGORITHMS is empty")
    weak = set(settings.OIDC_ALGORITHMS) - auth.ASYMMETRIC_ALGORITHMS
    if weak:
        problems.append(
            f"OIDC_ALGORITHMS has {sorted(weak)}: only "
            f"{sorted(auth.ASYMMETRIC_ALGORITHMS)} are accepted"
        )
    for name in ("OIDC_ISSUER", "OIDC_JWKS_URL"):
        url = urlsplit(getattr(settings, name))
        if url.scheme == "https" or (
            url.scheme == "http" and url.hostname in ("127.0.0.1", "::1", "localhost")
        ):
            continue
        if name == "OIDC_ISSUER" or url.scheme:
            problems.append(f"{name} is not an https:// URL")
    return [
        Error(f"{problem}.", hint="See core.auth.", id="core.E004")
        for problem in problems
    ]
