"""Thin Celery tasks for drift: build a requested report, and beat's scheduled ones."""

from __future__ import annotations

from typing import Any

from celery.signals import worker_shutdown

from workers.celery_app import app
from workers.drift import close_runtime, run_report, schedule_report
from workers.pipeline import worker_policies


@app.task(name="assay.drift.report", acks_late=True, reject_on_worker_lost=True)
def drift_report(report_id: str) -> str:
    """Build report ``report_id`` from the store's sketches; the outcome is stored on the report."""
    record = run_report(report_id, worker_policies())
    return record.status if record is not None else "missing"


@app.task(name="assay.drift.scheduled")
def drift_scheduled(policy: str, period: str) -> str:
    """Periodic (beat, from ASSAY_DRIFT_SCHEDULE): the last period against the policy's baseline."""
    return schedule_report(policy, period, worker_policies())


@worker_shutdown.connect
def _write_buffered_drift_events(**_: Any) -> None:
    # A warm shutdown writes the events still in the buffer; acknowledged ones are already stored.
    close_runtime()
