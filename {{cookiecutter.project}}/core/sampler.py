"""Samples each worker's event-loop lag, CPU time, memory and database pools, once
a second, and records its garbage collector's pauses (core.collector); the memory
sample also decides the worker's recycling (core.recycling).

The lag is how much later than asked a one-second sleep wakes up: time the loop
spent running something else, usually blocking code in a coroutine. It runs as a
task of the worker's own loop, from lifespan startup to shutdown.
"""

import asyncio
import os
import time

from core import collector, database, metrics, reads, recycling

INTERVAL_SECONDS = 1.0
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def _resident_bytes() -> int:
    # procfs lives in memory: this read does not wait on a disk.
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[1]) * PAGE_BYTES


async def run() -> None:
    loop = asyncio.get_running_loop()
    cpu = time.process_time()
    while True:
        due = loop.time() + INTERVAL_SECONDS
        await asyncio.sleep(INTERVAL_SECONDS)
        metrics.EVENT_LOOP_LAG.observe(max(0.0, loop.time() - due))
        cpu, previous = time.process_time(), cpu
        metrics.PROCESS_CPU.inc(cpu - previous)
        resident = _resident_bytes()
        metrics.PROCESS_MEMORY.set(resident)
        recycling.observe(resident, INTERVAL_SECONDS)
        sample_pools()
        collector.record()


def sample_pools() -> None:
    pools = {**reads.pool_stats(), **database.pool_stats()}
    for (alias, pool), stats in pools.items():
        metrics.observe_pool(alias, pool, stats)
