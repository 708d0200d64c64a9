"""arq's settings: none of its own. core.queue configures arq's pool and worker
from TASK_QUEUE and REDIS_URL; config.settings imports this module for every
queue library alike.
"""
