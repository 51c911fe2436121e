"""The Celery application: Redis (or an embedded filesystem broker), JSON only.

``celery -A workers.celery_app worker --pool threads -Q cpu`` runs a worker.
The threads pool matters: concurrent jobs in one process share the batched
generator, so sixteen jobs become one ``generate`` call, not sixteen.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu import Queue

from workers.settings import WorkerSettings, worker_settings


def _broker(settings: WorkerSettings) -> tuple[str, dict[str, Any]]:
    if not settings.embedded:
        # acks_late jobs are redelivered after this long if a worker vanishes.
        return settings.broker_url, {
            "visibility_timeout": settings.visibility_timeout_s,
            # Look for a vanished worker's unacked jobs every ~5 s, not kombu's default ~100 s.
            "unacked_restore_interval": 5,
            "unacked_restore_throttle": 1,
        }
    base = settings.data_dir / "broker"
    for sub in ("queue", "processed", "control"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    (settings.data_dir / "results").mkdir(parents=True, exist_ok=True)
    return "filesystem://", {
        # One folder in and out: producer and consumer share it on this machine.
        "data_folder_in": str(base / "queue"),
        "data_folder_out": str(base / "queue"),
        "control_folder": str(base / "control"),
        "processed_folder": str(base / "processed"),
        "store_processed": False,
        "polling_interval": 0.05,
    }


def create_celery(settings: WorkerSettings | None = None) -> Celery:
    settings = settings or worker_settings()
    broker, transport_options = _broker(settings)
    app = Celery("assay", broker=broker, backend=settings.resolved_result_backend())
    queues = [Queue(name, routing_key=name) for name in settings.queues()]
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        task_queues=queues,
        task_default_queue=settings.default_queue,
        task_track_started=True,
        # One job at a time per thread; the generator batches across threads.
        worker_prefetch_multiplier=1,
        task_time_limit=settings.job_time_limit_s,
        result_expires=24 * 3600,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_send_sent_event=False,
        include=["workers.tasks"],
        beat_schedule={
            "audit-sweep": {"task": "assay.audit.sweep", "schedule": 60.0},
        },
    )
    return app


app = create_celery()
