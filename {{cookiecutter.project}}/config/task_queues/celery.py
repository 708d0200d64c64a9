"""Celery's settings (core.queue reads them with the CELERY_ prefix), on Redis.

config.settings imports this module once it has set REDIS_URL and TASK_QUEUE.
Results are not kept: a task records what it did in the database.
"""

from config.settings import REDIS_URL, TASK_QUEUE

CELERY_BROKER_URL = REDIS_URL
CELERY_BROKER_TRANSPORT_OPTIONS = {
    # Queue, unacknowledged tasks and control channels of this service only.
    "global_keyprefix": f"{TASK_QUEUE}:",
    # A task not acknowledged after this long is handed out again: the worker
    # sets it from its tasks' time limits (core.queue.redelivery_after). Its
    # workers look for such tasks every this many seconds.
    "unacked_restore_interval": 5,
    "unacked_restore_throttle": 1,
    # A publish to a broker gone silent fails instead of hanging the request.
    "socket_timeout": 10,
    "socket_connect_timeout": 5,
}
CELERY_TASK_DEFAULT_QUEUE = TASK_QUEUE
CELERY_TASK_IGNORE_RESULT = True
# Acknowledged once run, and put back when the worker process running it dies.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
# A worker process reserves only the task it runs: the others stay for other workers.
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
