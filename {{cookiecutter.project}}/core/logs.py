"""Adds the current request id to every log record (None outside requests), and
the trace and span ids of the current span when tracing is on (core.tracing)."""

import logging

from core import tracing
from core.context import REQUEST_ID


class RequestContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        if tracing.ENABLED and (ids := tracing.current_ids()) is not None:
            record.trace_id, record.span_id = ids
        return True
