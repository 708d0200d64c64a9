"""GET /metrics: the sum of every worker's metrics, in Prometheus's text format.

Any worker may answer a scrape: with PROMETHEUS_MULTIPROC_DIR set (bin/serve), it
reads the files all workers of this server write there. Before reading, it retires
the files of workers that have exited:
  - their live gauges are deleted, so that a crashed worker's in-flight requests
    and open connections stop counting at once;
  - their counters and histograms are added into one archive file per kind, so
    that totals keep growing across worker recycling while the directory does
    not grow with every recycled worker.
Scrapes take a lock on the directory, so none sees a retired worker twice or not
at all. The work runs in a thread: it reads files, which the event loop must not.

A file that is still empty holds nothing yet, and is left out: prometheus_client
creates a process's file and only then sizes it, and its reader fails on an
empty one with a struct.error that fails the whole scrape, every worker's
metrics with it (prometheus/client_python#1199, open; a worker killed in that
moment would leave its empty file, and every later scrape would fail).
"""

import asyncio
import fcntl
import glob
import os
from contextlib import contextmanager
from pathlib import Path

from django.http import HttpResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    generate_latest,
)
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

# Files of these kinds only ever add up, so a dead worker's values can be merged.
ADDITIVE_KINDS = ("counter", "histogram", "summary")


async def metrics(request):
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    body = await asyncio.to_thread(render, directory)
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)


def render(directory: str | None, collectors=()) -> bytes:
    """The workers' metrics; with a directory, also those `collectors` read now."""
    if not directory:
        return generate_latest(REGISTRY)
    with _locked(Path(directory)):
        retire_dead_workers(Path(directory))
        registry = CollectorRegistry()
        registry.register(WrittenFiles(directory))
        for collector in collectors:
            registry.register(collector)
        return generate_latest(registry)


class WrittenFiles:
    """prometheus_client's MultiProcessCollector, over the files that are not empty."""

    def __init__(self, directory: str):
        self.directory = directory

    def collect(self):
        files = [
            path
            for path in glob.glob(os.path.join(self.directory, "*.db"))
            if not _empty(path)
        ]
        return MultiProcessCollector.merge(files, accumulate=True)


def _empty(path: str | Path) -> bool:
    """Whether the file holds nothing yet; a file gone meanwhile holds nothing."""
    try:
        return os.path.getsize(path) == 0
    except FileNotFoundError:
        return True


@contextmanager
def _locked(directory: Path):
    with open(directory / "scrape.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


def _pid_of(path: str) -> int | None:
    """The writer's pid from prometheus_client's file names: counter_123.db,
    gauge_livesum_123.db; None for the archives (counter_archive.db)."""
    pid = Path(path).stem.rsplit("_", 1)[-1]
    return int(pid) if pid.isdigit() else None


def retire_dead_workers(directory: Path) -> None:
    files = glob.glob(str(directory / "*.db"))
    dead = {pid for pid in map(_pid_of, files) if pid and not _is_alive(pid)}
    for pid in dead:
        mark_process_dead(pid, str(directory))
        for kind in ADDITIVE_KINDS:
            worker_file = directory / f"{kind}_{pid}.db"
            if worker_file.exists():
                if not _empty(worker_file):
                    _add_into(directory / f"{kind}_archive.db", worker_file)
                worker_file.unlink()


def _add_into(archive_path: Path, worker_file: Path) -> None:
    archive = MmapedDict(str(archive_path))
    try:
        for key, value, _, _ in MmapedDict.read_all_values_from_file(str(worker_file)):
            total, _ = archive.read_value(key)
            archive.write_value(key, total + value, 0.0)
    finally:
        archive.close()
