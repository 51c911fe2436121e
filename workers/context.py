"""Celery side of the request id and of logging: headers out, context in, JSON log lines.

- ``before_task_publish``: a task sent while a request id is current (an API
  request, or a task run for one) carries it in the message headers;
- ``task_prerun``: the worker makes the message's request id current while
  the task runs, so the task's log records carry it (and the tasks it sends);
- ``setup_logging``: Celery processes (worker, beat) log like the API, as
  JSON lines unless ``ASSAY_LOG_FORMAT=text``.
"""

from __future__ import annotations

from typing import Any

from celery.signals import before_task_publish, setup_logging, task_prerun

from evaluators.logs import configure_logging, request_id
from evaluators.settings import evaluator_settings

HEADER = "request_id"


def _add_request_id(headers: dict[str, Any] | None = None, **_: Any) -> None:
    current = request_id.get()
    if current and headers is not None:
        headers.setdefault(HEADER, current)


def _enter_request(task: Any = None, **_: Any) -> None:
    # Set for every task, so a thread of the pool never keeps the previous task's id.
    value = getattr(getattr(task, "request", None), HEADER, None)
    request_id.set(value if isinstance(value, str) else None)


def _configure_logging(loglevel: Any = None, **_: Any) -> None:
    configure_logging(loglevel or "INFO", json_lines=evaluator_settings().log_format == "json")


def install_request_context() -> None:
    """Connect the handlers (idempotent: Celery's signals keep one connection per receiver)."""
    before_task_publish.connect(_add_request_id, weak=False, dispatch_uid="assay-request-id-out")
    task_prerun.connect(_enter_request, weak=False, dispatch_uid="assay-request-id-in")
    setup_logging.connect(_configure_logging, weak=False, dispatch_uid="assay-logging")
