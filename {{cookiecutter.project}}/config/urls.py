from django.urls import include, path

from core import exposition, health, openapi

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    # Not public: Nginx answers 404 for it; Prometheus scrapes the app directly.
    path("metrics", exposition.metrics, name="metrics"),
    path("api/openapi.json", openapi.OpenApiDocument.as_view(), name="openapi"),
    path("api/", include("items.urls")),
{%- if cookiecutter.tasks != "none" %}
    path("api/", include("items.reports")),
{%- endif %}
]

handler400 = "core.api.bad_request"
handler403 = "core.api.permission_denied"
handler404 = "core.api.not_found"
handler500 = "core.api.server_error"
