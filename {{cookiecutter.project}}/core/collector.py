"""The garbage collector of each worker: its thresholds (GC_THRESHOLDS), set at
lifespan startup, and how long each of its collections stops the worker
(django_worker_gc_pause_seconds).

A worker that holds thousands of WebSockets or event streams holds millions of
objects, and a full collection walks every one of them while the event loop
answers nothing: 0.8 s with 5,000 WebSockets (tests/bench/notes.md). Sending one
event to them makes tasks and queues for each subscriber; those still alive when
a young collection runs are moved to the oldest generation, and enough of them
start a full collection. Young collections that run less often find fewer of
them alive, hence the higher first threshold (Python's: 2000 on 3.13, 700
before). The other two stay Python's: a full collection still runs once the
oldest generation has grown by a quarter, so cyclic garbage is still freed.

A collection can start inside any allocation, prometheus_client's included,
while it holds the lock of its multiprocess values: the callback that times the
collections must not take that lock, or the worker waits for itself forever.
So it only keeps each pause, and core.sampler records them once a second.
"""

import gc
import time
from collections import deque

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from core import metrics

_collection_started: float | None = None
# (generation, seconds) of the collections not recorded yet; a deque, as the
# sampler takes them in the event loop's thread while a collection in another
# thread adds one.
_pauses: deque = deque()


def thresholds() -> tuple[int, int, int]:
    """GC_THRESHOLDS, checked: three whole numbers, the first at least 1 (0 would
    turn the collector off, and cyclic garbage would never be freed)."""
    value = settings.GC_THRESHOLDS
    parts = value.split(",")
    whole = len(parts) == 3 and all(part.strip().isdigit() for part in parts)
    if not whole or int(parts[0]) < 1:
        raise ImproperlyConfigured(
            f"GC_THRESHOLDS is {value!r}: it must be three whole numbers, "
            "the first at least 1, such as 10000,10,10."
        )
    first, second, third = (int(p) for p in parts)
    return first, second, third


def configure() -> None:
    """In each worker, once: its thresholds, and the timing of its collections."""
    gc.set_threshold(*thresholds())
    if _timed not in gc.callbacks:
        gc.callbacks.append(_timed)


def record() -> None:
    """Records the pauses kept since the last call (core.sampler)."""
    while _pauses:
        generation, seconds = _pauses.popleft()
        metrics.GC_PAUSE.labels(str(generation)).observe(seconds)


def _timed(phase: str, info: dict) -> None:
    # Collections never overlap (the collector holds the GIL), so one start time
    # is enough, whichever thread triggered the collection.
    global _collection_started
    if phase == "start":
        _collection_started = time.perf_counter()
    elif _collection_started is not None:
        _pauses.append((info["generation"], time.perf_counter() - _collection_started))
        _collection_started = None
