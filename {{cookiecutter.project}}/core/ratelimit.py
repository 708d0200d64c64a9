"""Requests per caller: at most API_RATE_LIMIT_REQUESTS per principal (core.auth)
in each window of API_RATE_LIMIT_SECONDS; more get 429 with Retry-After.

Nginx limits requests per client address; this limits each token, wherever its
requests come from, so that one caller's runaway job cannot take every worker.
The count is kept in the cache: in Redis, shared by every process and pod, when
REDIS_URL is set, and per process otherwise. Fixed windows (Redis INCR with an
expiry) cost one round trip per request; a caller may send up to twice the limit
across a window's edge, which is the usual price of that simplicity. When Redis
fails, requests are not limited (core.cache counts the failure): a limit must
not turn a cache outage into an API outage.
"""

import hashlib
import time

from django.conf import settings
from django.core.cache import cache

from core import metrics
from core.auth import Principal


async def wait_before(principal: Principal) -> int | None:
    """Seconds until the caller may send again, or None when under its limit."""
    limit = settings.API_RATE_LIMIT_REQUESTS
    if limit == 0:
        return None
    window = settings.API_RATE_LIMIT_SECONDS
    now = time.time()
    started = int(now // window) * window
    # Hashed: a token's subject is the issuer's string, of any length or charset.
    subject = hashlib.sha256(principal.subject.encode()).hexdigest()[:32]
    key = f"ratelimit:{principal.kind}:{subject}:{started}"
    count = await cache.acount(key, timeout=window)
    if count is None or count <= limit:
        return None
    metrics.RATE_LIMITED.labels(principal.kind).inc()
    return max(1, round(started + window - now))
