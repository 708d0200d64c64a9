"""Dramatiq's settings: none of its own. core.queue configures Dramatiq's broker
and worker from TASK_QUEUE and REDIS_URL; config.settings imports this module for
every queue library alike.
"""
