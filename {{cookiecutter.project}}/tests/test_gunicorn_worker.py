"""Gunicorn's worker class (config/gunicorn_worker_class.py): the Uvicorn each
worker runs is configured as bin/serve configures Uvicorn on its own."""

import logging
import os
import signal
import subprocess
import sys

import pytest
from django.conf import settings
from gunicorn.config import Config
from gunicorn.glogging import Logger

from config.gunicorn_worker_class import ServiceUvicornWorker

# The loggers a worker reconfigures when it is made (uvicorn-worker, and Gunicorn's
# Logger): put back as they were after each test.
LOGGERS = ("gunicorn.error", "gunicorn.access", "uvicorn.error", "uvicorn.access")


@pytest.fixture
def worker():
    """A worker as Gunicorn's arbiter makes one, before it forks it, with
    Gunicorn's access log on (as an operator's GUNICORN_CMD_ARGS="--access-logfile
    -" would)."""
    loggers = [logging.getLogger(name) for name in LOGGERS]
    saved = [(lg.handlers[:], lg.level, lg.propagate) for lg in loggers]
    cfg = Config()
    cfg.set("accesslog", "-")
    made = ServiceUvicornWorker(
        age=1,
        ppid=os.getpid(),
        sockets=[],
        app=None,
        timeout=30,
        cfg=cfg,
        log=Logger(cfg),
    )
    try:
        yield made
    finally:
        # Its heartbeat file, which Gunicorn opens for each worker.
        made.tmp.close()
        for lg, (handlers, level, propagate) in zip(loggers, saved, strict=True):
            lg.handlers, lg.propagate = handlers, propagate
            lg.setLevel(level)


def test_uvicorn_writes_neither_an_access_line_nor_a_server_header(worker):
    """bin/serve runs Uvicorn with --no-access-log --no-server-header: the service
    writes its own JSON access line (core.middleware), and names no server.
    Uvicorn's defaults are the opposite: under Gunicorn its access line would go
    to Gunicorn's access log, in plain text, beside the service's."""
    assert worker.config.access_log is False
    assert worker.config.server_header is False


# A worker process as Gunicorn's arbiter starts one (its signals set up), whose
# loop is then stuck where the arbiter's SIGABRT (--timeout) finds it.
STUCK_WORKER = """
import os, signal
from gunicorn.config import Config
from gunicorn.glogging import Logger
from config.gunicorn_worker_class import ServiceUvicornWorker

cfg = Config()
worker = ServiceUvicornWorker(
    age=1, ppid=os.getppid(), sockets=[], app=None, timeout=30, cfg=cfg, log=Logger(cfg)
)
worker.init_signals()

def stuck_in_a_blocking_call():
    os.kill(os.getpid(), signal.SIGABRT)

stuck_in_a_blocking_call()
"""


def test_a_worker_the_arbiter_aborts_writes_where_it_was_stuck():
    """Gunicorn's arbiter sends SIGABRT to a worker that missed its heartbeat for
    --timeout (an event loop blocked): its Python stack goes to stderr before it
    dies, also as bin/serve runs it with PYTHONFAULTHANDLER, which uvicorn-worker's
    signal reset would otherwise undo."""
    ended = subprocess.run(  # noqa: S603  (this interpreter, our own script)
        [sys.executable, "-c", STUCK_WORKER],
        cwd=settings.BASE_DIR,
        env={**os.environ, "PYTHONFAULTHANDLER": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ended.returncode == -signal.SIGABRT, ended.stderr
    assert "Fatal Python error: Aborted" in ended.stderr, ended.stderr
    assert "in stuck_in_a_blocking_call" in ended.stderr, ended.stderr
