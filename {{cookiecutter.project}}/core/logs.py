"""Adds the current request id to every log record (None outside requests)."""

import logging

from core.context import REQUEST_ID


class RequestContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True
