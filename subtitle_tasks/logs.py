"""Structured logs: ``SUBTITLE_TASKS_LOG_FORMAT=json`` makes every subtitle_tasks log line a
JSON object, with the request's context as fields.

The pipeline and the edge pass their context as ``extra`` (``context(...)``): request
id(s), generation, site, upload, language, job id, attempt. With the default text
format those fields are simply not shown; with JSON they are keys, so a log system can
follow one request across workers without parsing messages. Secrets never reach a
record: nothing here reads a token, and the client redacts answers before logging.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

# The keys context() may set; nothing else from `extra` is copied into the JSON.
CONTEXT_KEYS = ("request_id", "request_ids", "generation_id", "site", "upload_id", "language_code", "job_id",
                "track_id", "attempt", "phase")


def context(**fields: Any) -> dict[str, Any]:
    """``extra=`` for a log call: the known context keys that have a value."""
    return {key: value for key, value in fields.items() if key in CONTEXT_KEYS and value not in (None, "", ())}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, context, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in CONTEXT_KEYS:
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = list(value) if isinstance(value, tuple) else value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def install(log_format: str) -> bool:
    """Put the JSON formatter on the ``subtitle_tasks`` logger (idempotent); True if it did."""
    if log_format != "json":
        return False
    logger = logging.getLogger("subtitle_tasks")
    if any(isinstance(h.formatter, JsonFormatter) for h in logger.handlers):
        return False
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    logger.propagate = False  # one line per record, not a second text copy via the root logger
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    return True
