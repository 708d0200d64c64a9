"""What a write sets off once it has committed: events for the event stream and
WebSocket clients, tasks for the worker.

The write is what the client asked for. Once it has committed, a failure of what
follows must not be answered 5xx: the client would take the write for failed and
retry it, writing it twice. So each follow-up here is bounded by TIMEOUT_SECONDS,
a failure is counted (django_followups_failed_total{step}) and logged with the
request's id, and the response stays the write's.

What such a failure loses: listeners miss one event (they see the change on their
next read).{% if cookiecutter.tasks != "none" %} Tasks are not sent from here: core.outbox keeps what the broker
does not take and sends it later.{% endif %}
"""

import asyncio
import logging
from collections.abc import Awaitable

from core import metrics

logger = logging.getLogger(__name__)

# A channel layer or broker that takes longer than this is treated as down: the
# client's answer is not held up by what it did not ask for.
TIMEOUT_SECONDS = 2.0


async def run(step: str, followup: Awaitable) -> None:
    """Awaits `followup` ("publish"); a failure is counted and logged, never raised."""
    try:
        async with asyncio.timeout(TIMEOUT_SECONDS):
            await followup
    except Exception:
        metrics.FOLLOWUPS_FAILED.labels(step).inc()
        logger.warning("follow-up failed", extra={"step": step}, exc_info=True)
