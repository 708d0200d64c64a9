"""Each worker's garbage collector (core.collector): its thresholds come from
GC_THRESHOLDS at lifespan startup, and each collection's pause is timed, then
recorded by the sampler."""

import gc

import pytest
from asgiref.testing import ApplicationCommunicator
from django.core.exceptions import ImproperlyConfigured
from prometheus_client import REGISTRY

from config.asgi import application
from core import collector
from core.checks import check_gc_thresholds

LIFESPAN = {"type": "lifespan", "asgi": {"version": "3.0"}}


@pytest.fixture(autouse=True)
def collector_restored():
    """The test process's own collector, as it was; meanwhile only the tests'
    own gc.collect() calls collect, so that each counts exactly one pause."""
    thresholds, callbacks = gc.get_threshold(), list(gc.callbacks)
    enabled = gc.isenabled()
    gc.disable()
    yield
    gc.set_threshold(*thresholds)
    gc.callbacks[:] = callbacks
    if enabled:
        gc.enable()


def pauses(generation: int) -> float:
    return (
        REGISTRY.get_sample_value(
            "django_worker_gc_pause_seconds_count", {"generation": str(generation)}
        )
        or 0.0
    )


async def test_lifespan_startup_sets_the_thresholds_and_times_each_collection(settings):
    settings.GC_THRESHOLDS = "5000,7,9"
    communicator = ApplicationCommunicator(application, LIFESPAN)
    await communicator.send_input({"type": "lifespan.startup"})
    assert await communicator.receive_output(timeout=5) == {
        "type": "lifespan.startup.complete"
    }
    try:
        assert gc.get_threshold() == (5000, 7, 9)
        for generation in (0, 1, 2):
            collector.record()  # those of collections before this test's
            before = pauses(generation)
            gc.collect(generation)
            collector.record()
            assert pauses(generation) == before + 1
    finally:
        await communicator.send_input({"type": "lifespan.shutdown"})
        await communicator.receive_output(timeout=5)
        await communicator.wait(timeout=5)


def test_collections_are_timed_once_however_often_it_is_configured():
    collector.configure()
    collector.configure()
    assert gc.callbacks.count(collector._timed) == 1
    collector.record()
    before = pauses(0)
    gc.collect(0)
    collector.record()
    assert pauses(0) == before + 1


def test_a_collection_takes_no_metrics_lock_its_pause_waits_for_the_sampler():
    """A collection can start inside prometheus_client, while it holds the lock of
    its values: a callback that took it then would wait for itself forever (it
    did, in the broadcast benchmark)."""
    collector.configure()
    collector.record()
    before = pauses(2)
    gc.collect()
    assert pauses(2) == before
    collector.record()
    assert pauses(2) == before + 1


def test_the_default_collects_young_objects_less_often_than_python():
    """Python's first threshold is 700, or 2000 since 3.13."""
    assert collector.thresholds() == (10000, 10, 10)


@pytest.mark.parametrize(
    "value", ["", "10000,10", "10000,10,10,10", "0,10,10", "-1,10,10", "many,10,10"]
)
def test_thresholds_other_than_three_whole_numbers_are_refused(settings, value):
    """By the system check, and by the worker's startup: 0 first would turn the
    collector off."""
    settings.GC_THRESHOLDS = value
    message = (
        f"GC_THRESHOLDS is {value!r}: it must be three whole numbers, "
        "the first at least 1, such as 10000,10,10."
    )
    [error] = check_gc_thresholds(None)
    assert (error.id, error.msg) == ("core.E005", message)
    with pytest.raises(ImproperlyConfigured) as raised:
        collector.configure()
    assert str(raised.value) == message
    assert gc.get_threshold() != (0, 10, 10)


async def test_a_worker_with_wrong_thresholds_does_not_start(settings):
    settings.GC_THRESHOLDS = "0,10,10"
    communicator = ApplicationCommunicator(application, LIFESPAN)
    await communicator.send_input({"type": "lifespan.startup"})
    failed = await communicator.receive_output(timeout=5)
    assert failed["type"] == "lifespan.startup.failed"
    assert "GC_THRESHOLDS is '0,10,10'" in failed["message"]
