"""A worker whose memory stays over its limit stops itself as a deploy stops it."""

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
    monkeypatch.setattr(recycling, "_seconds_over", 0.0)
    monkeypatch.setattr(recycling, "_stopping", False)
    sent = []
    monkeypatch.setattr(os, "kill", lambda pid, signum: sent.append((pid, signum)))
    return sent


def recycles() -> float:
    return (
        REGISTRY.get_sample_value("django_worker_recycles_total", {"reason": "memory"})
        or 0.0
    )


def test_over_the_limit_for_its_seconds_the_worker_stops_itself_once(signals):
    before = recycles()
    for _ in range(2):
        recycling.observe(100 * MIB, 1.0)
    assert signals == []
    recycling.observe(150 * MIB, 1.0)
    assert signals == [(os.getpid(), signal.SIGTERM)]
    for _ in range(5):
        recycling.observe(150 * MIB, 1.0)
    assert signals == [(os.getpid(), signal.SIGTERM)]
    assert recycles() == before + 1


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
