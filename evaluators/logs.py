"""Log records as JSON lines carrying the request id; set up once per process at its entry point.

A request id names one API request and everything done for it: the API
takes ``X-Request-ID`` (or makes one), puts it in ``request_id`` for the
request's task, sends it along in the Celery message headers of the jobs it
queues, and the worker sets it again while it runs the task. Every record
logged meanwhile carries it.

No raw text reaches a log: Assay's own log calls pass ids, hashes, counts and
exception types, never a prompt or an output, and this formatter adds only
the record's own fields.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import sys
import uuid
from contextvars import ContextVar
from typing import Any

request_id: ContextVar[str | None] = ContextVar("assay_request_id", default=None)
"""The request id of the work in progress in this task or thread, if any."""

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")


def accept_request_id(value: str | None) -> str:
    """The caller's request id when it is a sane token (1-128 printable, no spaces), else a new one."""
    if value and _REQUEST_ID.match(value):
        return value
    return uuid.uuid4().hex


class RequestIdFilter(logging.Filter):
    """Puts the current request id on every record (``record.request_id``, None outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id, process, and any exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
            "pid": record.process,
            "thread": record.threadName,
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"


def configure_logging(level: int | str = logging.INFO, *, json_lines: bool = True) -> None:
    """Send every record to stderr, as JSON lines or text, with the request id; replaces earlier handlers."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # Presidio logs every recognizer it loads at INFO; keep startup output readable.
    logging.getLogger("presidio-analyzer").setLevel(logging.WARNING)
