"""A worker that reached its request count, or whose memory stays over its limit,
stops itself as a deploy stops it."""

import os
import signal

import pytest
from prometheus_client import REGISTRY

from core import recycling

MIB = 1024 * 1024


@pytest.fixture
def signals(monkeypatch, settings):
    """The signals the worker sends itself (none really sent), with a 100 MiB
    limit for 3 s."""
    settings.WORKER_MAX_RSS_MB = 100
    settings.WORKER_MAX_RSS_SECONDS = 3
    settings.MAX_REQUESTS = 0
    monkeypatch.setattr(recycling, "_seconds_over", 0.0)
    monkeypatch.setattr(recycling, "_requests", 0)
    monkeypatch.setattr(recycling, "_stopping", False)
    recycling.request_limit.cache_clear()
    sent = []
    monkeypatch.setattr(os, "kill", lambda pid, signum: sent.append((pid, signum)))
    yield sent
    recycling.request_limit.cache_clear()


def recycles(reason: str) -> float:
    return (
        REGISTRY.get_sample_value("django_worker_recycles_total", {"reason": reason})
        or 0.0
    )


def test_over_the_limit_for_its_seconds_the_worker_stops_itself_once(signals):
    before = recycles("memory")
    for _ in range(2):
        recycling.observe(100 * MIB, 1.0)
    assert signals == []
    recycling.observe(150 * MIB, 1.0)
    assert signals == [(os.getpid(), signal.SIGTERM)]
    for _ in range(5):
        recycling.observe(150 * MIB, 1.0)
    assert signals == [(os.getpid(), signal.SIGTERM)]
    assert recycles("memory") == before + 1


def test_a_sample_under_the_limit_starts_the_count_again(signals):
    for resident in (120, 120, 99, 120, 120):
        recycling.observe(resident * MIB, 1.0)
    assert signals == []
    recycling.observe(120 * MIB, 1.0)
    assert signals == [(os.getpid(), signal.SIGTERM)]


def test_no_limit_never_stops_the_worker(signals, settings):
    settings.WORKER_MAX_RSS_MB = 0
    for _ in range(10):
        recycling.observe(10_000 * MIB, 1.0)
    assert signals == []


def test_at_its_request_count_the_worker_stops_itself_once(signals, settings):
    settings.MAX_REQUESTS, settings.MAX_REQUESTS_JITTER = 5, 0
    before = recycles("requests")
    for _ in range(4):
        recycling.count_request()
    assert signals == []
    recycling.count_request()
    assert signals == [(os.getpid(), signal.SIGTERM)]
    for _ in range(5):
        recycling.count_request()
    assert signals == [(os.getpid(), signal.SIGTERM)]
    assert recycles("requests") == before + 1


def test_each_worker_adds_its_own_jitter(signals, settings):
    settings.MAX_REQUESTS, settings.MAX_REQUESTS_JITTER = 100, 50
    limits = set()
    for _ in range(50):
        recycling.request_limit.cache_clear()
        limits.add(recycling.request_limit())
    assert min(limits) >= 100
    assert max(limits) <= 150
    assert len(limits) > 1


def test_no_request_count_never_stops_the_worker(signals):
    for _ in range(1000):
        recycling.count_request()
    assert signals == []
