"""Written by tests/bench into its copy of the service: the service's settings,
with the request path chosen by BENCH_* variables."""

import os

from config.settings import *  # noqa: F403
from config.settings import MIDDLEWARE

ROOT_URLCONF = "bench_urls"

# What a team without this template runs: Django's own classes, each hook of
# which Django sends through sync_to_async under ASGI.
STOCK_MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
if os.environ.get("BENCH_STOCK") == "1" or os.environ.get("BENCH_WSGI") == "1":
    MIDDLEWARE = STOCK_MIDDLEWARE
elif os.environ.get("BENCH_METRICS", "1") != "1":
    MIDDLEWARE = [m for m in MIDDLEWARE if m != "core.middleware.MetricsMiddleware"]
