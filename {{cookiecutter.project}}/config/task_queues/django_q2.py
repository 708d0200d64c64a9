"""django-q2's settings: its cluster (core.queue) and its broker, the database:
the table django_q_ormq, one row per task.

config.settings imports this module once it has set INSTALLED_APPS, CACHES and
TASK_QUEUE.
"""

from config.settings import CACHES, INSTALLED_APPS, TASK_QUEUE, env

# Among the libraries' apps, before the service's own.
INSTALLED_APPS = [
    *INSTALLED_APPS[: INSTALLED_APPS.index("core")],
    "django_q",
    *INSTALLED_APPS[INSTALLED_APPS.index("core") :],
]
WORKER_CONCURRENCY = env.int("WORKER_CONCURRENCY", default=2)
Q_CLUSTER = {
    "name": TASK_QUEUE,
    "orm": "default",
    "workers": WORKER_CONCURRENCY,
    # Tasks the cluster takes ahead of its workers: one each.
    "queue_limit": WORKER_CONCURRENCY,
    # No task's hard time limit (core.queue) may exceed it, and a task is not
    # handed out again sooner than twice it (retry): the longest task's, a few
    # seconds over (items.build_report: 120 s, + core.queueing.HARD_LIMIT_MARGIN).
    # core.queue refuses a task whose limit exceeds it.
    "timeout": 130,
    # An unacknowledged task is handed out again after this many seconds: one
    # whose worker died. Longer than a task can wait behind another in the
    # cluster (queue_limit) and then run.
    "retry": 2 * 130 + 60,
    # Retries are core.queue's, with their own delays: the broker drops every
    # finished attempt, and never hands a failed one out again.
    "ack_failures": True,
    "max_attempts": 1,
    # core.tasks logs and counts every attempt; results are not read. django-q2
    # keeps failed tasks regardless (django_q_task).
    "save_limit": -1,
    # The cluster's statistics (qmonitor, qinfo) need a cache shared by the
    # processes; this service keeps its state in logs and metrics instead.
    "cache": "django-q",
}
CACHES["django-q"] = {"BACKEND": "django.core.cache.backends.dummy.DummyCache"}
