"""Gunicorn's worker class (config/gunicorn_worker_class.py): the Uvicorn each
worker runs is configured as bin/serve configures Uvicorn on its own."""

import logging
import os

import pytest
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
