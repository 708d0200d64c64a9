"""Settings of Django's task framework: django-tasks-db keeps the tasks in this
service's database, and its db_worker processes (core.queue) run those of
TASK_QUEUE.

config.settings imports this module once it has set INSTALLED_APPS and TASK_QUEUE.
"""

from config.settings import INSTALLED_APPS, TASK_QUEUE

# Among the libraries' apps, before the service's own.
INSTALLED_APPS = [
    *INSTALLED_APPS[: INSTALLED_APPS.index("core")],
    "django_tasks_db",
    *INSTALLED_APPS[INSTALLED_APPS.index("core") :],
]
TASKS = {
    "default": {
        "BACKEND": "django_tasks_db.DatabaseBackend",
        "QUEUES": [TASK_QUEUE],
    }
}
