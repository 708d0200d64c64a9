"""The processes the tests start (bin/serve, bin/worker): none outlives a test
that fails, or that its timeout interrupts, while starting or stopping one.
Each is started in a session of its own (start_new_session=True), so that its
children (the server's workers, the task library's processes) die with it."""

import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager


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
