"""The processes the tests start (bin/serve, bin/worker): none outlives a test
that fails, or that its timeout interrupts, while starting or stopping one.
Each is started in a session of its own (start_new_session=True), so that its
children (the server's workers, the task library's processes) die with it.
free_port() gives each the port it listens on."""

import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path


@contextmanager
def killed_on_failure(process: subprocess.Popen) -> Iterator[None]:
    """Kills `process` and its process group if the block raises anything,
    pytest-timeout's too."""
    try:
        yield
    except BaseException:
        # A SIGKILLed server or worker cannot stop its children itself.
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise


def terminate(process: subprocess.Popen, timeout: float) -> int:
    """SIGTERM, as systemd and the kubelet stop it: its exit status, or it is
    killed and subprocess.TimeoutExpired raised."""
    process.send_signal(signal.SIGTERM)
    with killed_on_failure(process):
        return process.wait(timeout=timeout)


def abort_with_stacks(process: subprocess.Popen) -> None:
    """SIGABRT to `process` and its descendants, started with PYTHONFAULTHANDLER=1:
    faulthandler writes each one's Python stack, every thread's, to its output
    before it dies. For a test that fails because a process hangs. One at a time,
    the children first, so that stacks written to one file do not interleave."""
    for pid in [*_descendants(process.pid), process.pid]:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGABRT)
        time.sleep(0.5)


def _descendants(pid: int) -> list[int]:
    """The deepest first."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except FileNotFoundError:
        return []
    return [d for child in map(int, children) for d in [*_descendants(child), child]]


def free_port() -> int:
    """A port nothing listens on, for a server a test starts, chosen below the
    kernel's ephemeral range. A port bound as ("127.0.0.1", 0) comes from that
    range, which the source ports of outgoing connections come from too: one
    made in the meantime could take it before the server binds it (seen in CI:
    "Address already in use")."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    assert low > 10000, f"the ephemeral range starts at {low}: no room below it"
    for _ in range(100):
        port = random.randrange(10000, low)  # noqa: S311  (a port, not a secret)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue  # taken
        return port
    raise RuntimeError("no free port found in 100 tries")
