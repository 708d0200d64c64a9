"""Written by tests/bench into its copy of the service: the same service as WSGI,
the baseline a team would otherwise keep (Gunicorn sync or gthread workers)."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench_settings")
os.environ["BENCH_WSGI"] = "1"

from django.core.wsgi import get_wsgi_application

application = get_wsgi_application()
