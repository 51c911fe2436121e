"""Measurements the library reports, for whoever listens: the API and the workers turn them into metrics.

The evaluators import no metrics library. A process that exports metrics
subscribes once at start-up (``workers/metrics.py``); with no subscriber a
report costs a loop over an empty list. A subscriber that raises is logged
and skipped: measuring never breaks a moderation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

CheckTiming = Callable[[str, str, str, float], None]
"""Called with policy name, stage, check name and seconds, after a check ran on a batch."""
BatchSize = Callable[[str, str, int], None]
"""Called with policy name, stage and the number of texts, once per batch a policy evaluates."""

_check_listeners: list[CheckTiming] = []
_batch_listeners: list[BatchSize] = []


def on_check_timing(listener: CheckTiming) -> None:
    """Subscribe ``listener`` to check timings (once: subscribing it again changes nothing)."""
    if listener not in _check_listeners:
        _check_listeners.append(listener)


def on_batch_size(listener: BatchSize) -> None:
    """Subscribe ``listener`` to batch sizes (once)."""
    if listener not in _batch_listeners:
        _batch_listeners.append(listener)


def check_timed(policy: str, stage: str, check: str, seconds: float) -> None:
    """Report that ``check`` of ``policy`` ran on a batch at ``stage`` in ``seconds``."""
    for listener in list(_check_listeners):
        try:
            listener(policy, stage, check, seconds)
        except Exception:
            log.exception("a check-timing listener failed")


def batch_evaluated(policy: str, stage: str, size: int) -> None:
    """Report that ``policy`` evaluated ``size`` texts together at ``stage``."""
    for listener in list(_batch_listeners):
        try:
            listener(policy, stage, size)
        except Exception:
            log.exception("a batch-size listener failed")
