"""The service's system checks: async middleware, a documented API, and a clean
deploy check."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.core import signals
from django.core.checks import Tags, run_checks
from django.db import connections
from django.test import AsyncClient
from django.urls import path

from core.api import ApiView
from core.checks import (
    CAPS,
    check_api_is_documented,
    check_caps_are_positive,
    check_channel_layer_pool,
    check_middleware_stays_async,
    check_oidc_settings,
    check_request_signals_stay_async,
    check_secret_keys_are_strong,
)
from core.middleware_paths import MiddlewarePaths

SERVICE_DIR = Path(__file__).resolve().parent.parent


class SyncOnlyMiddleware:
    async_capable = False

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)


class Undeclared(ApiView):
    async def get(self, request):
        raise AssertionError("never called")


async def plain(request):
    """A team's function view: no contract, so not in the document, no error."""
    raise AssertionError("never called")


# ROOT_URLCONF of the test below: this module.
urlpatterns = [
    path("api/undeclared", Undeclared.as_view()),
    path("api/plain", plain),
]


def test_the_api_is_documented():
    assert check_api_is_documented(None) == []


def test_an_api_handler_without_its_operation_is_an_error(settings):
    settings.ROOT_URLCONF = __name__
    errors = check_api_is_documented(None)
    assert [e.id for e in errors] == ["core.E001"]
    assert "tests.test_checks.Undeclared.get has no @operation" in errors[0].msg


def test_default_middleware_stays_in_the_event_loop():
    assert check_middleware_stays_async(None) == []


@pytest.mark.parametrize(
    ("middleware", "reason"),
    [
        (
            "django.middleware.common.CommonMiddleware",
            "runs its process_request in a thread",
        ),
        ("django.middleware.csrf.CsrfViewMiddleware", "synchronous process_view"),
        (f"{__name__}.SyncOnlyMiddleware", "not async-capable"),
    ],
)
def test_middleware_that_switches_threads_is_reported(settings, middleware, reason):
    settings.MIDDLEWARE = [*settings.MIDDLEWARE, middleware]
    warnings = check_middleware_stays_async(None)
    assert [w.id for w in warnings] == ["core.W001"] * len(warnings)
    assert any(reason in w.msg and w.obj == middleware for w in warnings)


def test_deploy_checks_see_the_settings_of_our_security_middleware(settings):
    settings.SECURE_HSTS_SECONDS = 0
    settings.SECURE_SSL_REDIRECT = False
    settings.CSRF_COOKIE_SECURE = False
    ids = {message.id for message in run_checks(include_deployment_checks=True)}
    assert {"security.W004", "security.W008", "security.W016"} <= ids


def test_djangos_middleware_checks_find_our_subclasses_with_nothing_silenced():
    silenced = getattr(django_settings, "SILENCED_SYSTEM_CHECKS", [])
    assert not [check for check in silenced if check.startswith("security.")]
    ids = {message.id for message in run_checks(include_deployment_checks=True)}
    assert not {"security.W001", "security.W002", "security.W003"} & ids, ids


def test_a_missing_csrf_middleware_is_reported(settings):
    settings.MIDDLEWARE = MiddlewarePaths(
        name for name in settings.MIDDLEWARE if "Csrf" not in name
    )
    ids = {message.id for message in run_checks(include_deployment_checks=True)}
    assert "security.W003" in ids, ids


@pytest.mark.django_db(transaction=True)
async def test_a_form_post_outside_the_api_needs_its_csrf_token():
    """What a team's cookie-authenticated view gets: Django's CSRF check, with a
    JSON answer. The API's views are exempt: only a bearer token opens them."""
    client = AsyncClient(enforce_csrf_checks=True)
    response = await client.post("/healthz", {"a": "b"})
    assert response.status_code == 403
    assert response.json()["error"] == "csrf_failed"
    response = await client.post("/api/items", {}, content_type="application/json")
    assert response.status_code == 401


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"OIDC_AUDIENCE": ""}, "OIDC_AUDIENCE is not set"),
        ({"OIDC_ALGORITHMS": ["RS256", "HS256"]}, "OIDC_ALGORITHMS has ['HS256']"),
        ({"OIDC_ALGORITHMS": ["none"]}, "OIDC_ALGORITHMS has ['none']"),
        ({"OIDC_ISSUER": "http://idp.example"}, "OIDC_ISSUER is not an https:// URL"),
        (
            {"OIDC_JWKS_URL": "http://idp.example/keys"},
            "OIDC_JWKS_URL is not an https:// URL",
        ),
    ],
)
def test_oidc_settings_that_would_trust_forged_tokens_are_errors(
    settings, changes, problem
):
    settings.OIDC_ISSUER = "https://idp.example"
    settings.OIDC_AUDIENCE = "{{ cookiecutter.project }}"
    assert check_oidc_settings(None) == []
    for name, value in changes.items():
        setattr(settings, name, value)
    [error] = check_oidc_settings(None)
    assert error.id == "core.E004"
    assert error.msg.startswith(problem)


# A production environment; the deploy checks only read settings, so nothing
# here is connected to.
PRODUCTION = {
    "PATH": os.environ["PATH"],
    "DJANGO_DEBUG": "false",
    "DJANGO_SECRET_KEY": "a-production-secret-" + "x" * 50,
    "DJANGO_ALLOWED_HOSTS": "{{ cookiecutter.domain }}",
{%- if cookiecutter.database == "postgresql" %}
    "DATABASE_URL": "postgres://app@db.internal:5432/app",
{%- elif cookiecutter.database == "mysql" %}
    # Django's checks ask a MySQL server its version: the suite's own server
    # (without one, the tests that run them skip; the others only read settings).
    "DATABASE_URL": os.environ.get("DATABASE_URL")
    or "mysql://app@db.internal:3306/app",
{%- else %}
    "DATABASE_URL": "sqlite:////var/lib/{{ cookiecutter.project }}/db.sqlite3",
{%- endif %}
    "REDIS_URL": "redis://redis.internal:6379/0",
}


# Django's checks ask a MySQL server its version (its column types depend on
# it): a MySQL service's deploy checks run in its suite on MySQL only.
needs_mysql_if_generated_for_it = pytest.mark.skipif(
    django_settings.DATABASE_VENDOR == "mysql"
    and connections["default"].vendor != "mysql",
    reason="needs MySQL (DATABASE_URL): Django's checks ask the server its version",
)


def deploy_check(**environment) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=SERVICE_DIR,
        env={**PRODUCTION, **environment},
        capture_output=True,
        text=True,
        check=False,
    )


def settings_in(environment: dict, *names: str) -> dict:
    """{name: value} of settings as a new process computes them from environment."""
    code = (
        "import json, sys; from config import settings; "
        "print(json.dumps({name: getattr(settings, name) for name in sys.argv[1:]}))"
    )
    result = subprocess.run(  # noqa: S603  (this interpreter, our own code)
        [sys.executable, "-c", code, *names],
        cwd=SERVICE_DIR,
        env=environment,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize(
    ("debug", "hosts"),
    [("false", []), ("true", ["localhost", "127.0.0.1", "[::1]"])],
    ids=["production", "debug"],
)
def test_local_names_are_allowed_hosts_by_default_only_with_debug(debug, hosts):
    environment = {
        **{k: v for k, v in PRODUCTION.items() if k != "DJANGO_ALLOWED_HOSTS"},
        "DJANGO_DEBUG": debug,
        "DJANGO_READ_DOT_ENV": "false",
    }
    assert settings_in(environment, "ALLOWED_HOSTS") == {"ALLOWED_HOSTS": hosts}


@needs_mysql_if_generated_for_it
def test_deploy_check_is_clean_with_production_settings():
    result = deploy_check()
    assert result.returncode == 0, result.stderr + result.stdout


@pytest.mark.parametrize(
    ("key", "fallbacks"),
    [
        ("x" * 49, []),
        ("ab" * 50, []),
        ("a-production-secret-" + "x" * 50, ["y" * 10]),
    ],
)
def test_a_weak_secret_key_is_a_deploy_error(settings, key, fallbacks):
    settings.DEBUG = False
    settings.SECRET_KEY = key
    settings.SECRET_KEY_FALLBACKS = fallbacks
    messages = run_checks(include_deployment_checks=True, tags=[Tags.security])
    assert [m.id for m in messages if m.is_serious()] == ["core.E002"]


def test_a_weak_secret_key_is_allowed_in_debug(settings):
    settings.DEBUG = True
    settings.SECRET_KEY = "debug"
    assert check_secret_keys_are_strong(None) == []


@pytest.mark.parametrize("name", CAPS)
def test_a_cap_below_one_is_an_error(settings, name):
    assert check_caps_are_positive(None) == []
    setattr(settings, name, 0)
    [error] = check_caps_are_positive(None)
    assert error.id == "core.E003"
    assert error.msg == f"{name} is 0: it must be at least 1."


def test_a_channel_layer_pool_of_one_connection_is_an_error(settings):
    assert check_channel_layer_pool(None) == []
    settings.CHANNEL_LAYER_MAX_CONNECTIONS = 1
    [error] = check_channel_layer_pool(None)
    assert error.id == "core.E006"


@needs_mysql_if_generated_for_it
def test_secret_key_fallbacks_come_from_the_environment():
    """Rotation: the old keys, comma separated; each is checked like the key."""
    strong = "an-earlier-production-secret-" + "y" * 50
    result = deploy_check(DJANGO_SECRET_KEY_FALLBACKS=f"{strong},too-short")
    assert result.returncode != 0
    assert "core.E002" in result.stderr
    assert "DJANGO_SECRET_KEY_FALLBACKS[1]" in result.stderr
    assert "DJANGO_SECRET_KEY_FALLBACKS[0]" not in result.stderr


def sync_receiver(sender, **kwargs):
    pass


def test_sync_request_signal_receivers_are_reported():
    assert check_request_signals_stay_async(None) == []
    signals.request_finished.connect(sync_receiver)
    try:
        (warning,) = check_request_signals_stay_async(None)
    finally:
        signals.request_finished.disconnect(sync_receiver)
    assert warning.id == "core.W005"
    assert warning.obj == f"{__name__}.sync_receiver"
