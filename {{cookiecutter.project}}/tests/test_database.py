"""core.database.dropped: whether an idle connection's server went away, asked of
the socket itself, whatever its descriptor's number."""

import fcntl
import os
import resource
import socket
from contextlib import ExitStack

import pytest

from core import database

# Above select()'s bound (FD_SETSIZE, 1024): a worker holding a thousand
# WebSockets or event streams opens its database connections there.
HIGH = 1500


class Connection:
    """What dropped() asks of a driver's connection: its socket's descriptor."""

    def __init__(self, fd: int):
        self.fd = fd

    def fileno(self) -> int:
        return self.fd


@pytest.fixture(params=[False, True], ids=["low-descriptor", "high-descriptor"])
def connection(request):
    """A connection's socket and its server's end, on a descriptor above 1023 too."""
    with ExitStack() as cleanup:
        ours, server = socket.socketpair()
        cleanup.callback(ours.close)
        cleanup.callback(server.close)
        fd = ours.fileno()
        if request.param:
            fd = above_select(cleanup, fd)
        yield Connection(fd), server


def above_select(cleanup: ExitStack, fd: int) -> int:
    """A copy of `fd` numbered HIGH or more, closed with `cleanup`."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert hard > HIGH, f"the hard limit on open files ({hard}) is too low"
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, HIGH + 1), hard))
    cleanup.callback(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
    high = fcntl.fcntl(fd, fcntl.F_DUPFD, HIGH)
    cleanup.callback(os.close, high)
    assert high >= HIGH
    return high


def test_a_live_idle_connection_is_not_dropped(connection):
    idle, _ = connection
    assert not database.dropped(idle)


def test_a_connection_whose_server_said_something_or_left_is_dropped(connection):
    idle, server = connection
    server.sendall(b"E terminating connection due to administrator command")
    assert database.dropped(idle)


def test_a_connection_whose_server_closed_it_is_dropped(connection):
    idle, server = connection
    server.close()
    assert database.dropped(idle)
