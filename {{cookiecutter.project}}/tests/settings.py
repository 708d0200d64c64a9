"""The production settings, with only what a test run needs changed.

DATABASE_URL and REDIS_URL pass through: unset, the suite runs on SQLite and the
in-memory channel layer; set, on PostgreSQL and Redis.
"""

import os
import tempfile

os.environ.setdefault("DJANGO_SECRET_KEY", "test-only-" + "k" * 50)
os.environ["DJANGO_DEBUG"] = "false"
os.environ["DJANGO_SECURE_SSL_REDIRECT"] = "false"
# As the chart and the Ansible role set them: the public name, and localhost for
# probes (the tests' requests send it too).
os.environ["DJANGO_ALLOWED_HOSTS"] = "{{ cookiecutter.domain }},localhost"
os.environ["SSE_KEEPALIVE_SECONDS"] = "0.2"
os.environ["READINESS_TIMEOUT"] = "1"
{%- if cookiecutter.tasks != "none" %}
# A queue of this run's own, which the worker it starts inherits: suites that share
# a broker never run each other's tasks.
os.environ.setdefault("TASK_QUEUE", f"{{ cookiecutter.project }}-test-{os.getpid()}")
os.environ["TASK_RETRY_DELAY"] = "0.1"
{%- endif %}

from config.settings import *  # noqa: F403
from config.settings import DATABASES

if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # A file, as in production (WAL, a busy timeout), not Django's default shared
    # in-memory database, whose table locks fail concurrent writers at once.
    DATABASES["default"]["TEST"] = {
        "NAME": os.path.join(tempfile.gettempdir(), f"test-{os.getpid()}.sqlite3")
    }
{%- if cookiecutter.websockets == "yes" %}

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
{%- endif %}
