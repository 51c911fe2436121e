"""The Celery application: Redis (or an embedded filesystem broker), JSON only.

``celery -A workers.celery_app worker --pool threads -Q cpu`` runs a worker.
The threads pool matters: concurrent jobs in one process share the batched
generator, so sixteen jobs become one ``generate`` call, not sixteen.

There is no result backend: a job's outcome is recorded in the job store,
which is what the API reads, so tasks write nothing back to the broker.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from celery import Celery
from celery.signals import task_postrun
from kombu import Queue

from evaluators.runtime import configure_process, release_openmp_threads
from workers.context import install_request_context
from workers.settings import WorkerSettings, period_seconds, worker_settings
from workers.tracing import install_task_tracing, install_tracing


def broker_folders(data_dir: Path) -> dict[str, Path]:
    base = data_dir / "broker"
    return {"queue": base / "queue", "processed": base / "processed", "control": base / "control"}


def _broker(settings: WorkerSettings) -> tuple[str, dict[str, Any]]:
    if not settings.embedded:
        # acks_late jobs are redelivered after this long if a worker vanishes.
        return settings.broker_url, {
            "visibility_timeout": settings.visibility_timeout_s,
            # Look for a vanished worker's unacked jobs every ~5 s, not kombu's default ~100 s.
            "unacked_restore_interval": 5,
            "unacked_restore_throttle": 1,
        }
    folders = broker_folders(settings.data_dir)
    return "filesystem://", {
        # One folder in and out: producer and consumer share it on this machine.
        "data_folder_in": str(folders["queue"]),
        "data_folder_out": str(folders["queue"]),
        "control_folder": str(folders["control"]),
        "processed_folder": str(folders["processed"]),
        "store_processed": False,
        "polling_interval": 0.05,
    }


def drift_schedule(settings: WorkerSettings) -> dict[str, dict[str, Any]]:
    """Beat entries for ASSAY_DRIFT_SCHEDULE: hourly and daily on the clock, seconds as an interval."""
    from celery.schedules import crontab

    entries: dict[str, dict[str, Any]] = {}
    for policy, period in settings.drift_schedule.items():
        schedule: Any = {"hourly": crontab(minute="0"), "daily": crontab(minute="0", hour="0")}.get(period)
        entries[f"drift-{policy}-{period}"] = {
            "task": "assay.drift.scheduled",
            "schedule": schedule if schedule is not None else period_seconds(period),
            "args": [policy, period],
            "options": {"queue": settings.default_queue, "routing_key": settings.default_queue},
        }
    return entries


def create_celery(settings: WorkerSettings | None = None) -> Celery:
    """The Celery app; creating it configures the process (a worker's first step), connecting does not.

    Embedded mode's broker folders are made on the app's first use (its
    configuration is read lazily, when a task is sent or a worker starts).
    """
    # Before workers.tasks imports torch: the worker's entry point is this module.
    configure_process()
    settings = settings or worker_settings()
    broker, transport_options = _broker(settings)
    # Request ids into task headers and back out in workers; JSON logs in Celery processes.
    install_request_context()
    # Traces when an endpoint is set (a no-op in the API, which installed its own first); the trace
    # context rides in the task headers like the request id.
    install_tracing("assay-worker")
    install_task_tracing()
    app = Celery("assay", broker=broker)
    queues = [Queue(name, routing_key=name) for name in settings.queues()]
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        # Outcomes go to the job store; Celery keeps no results.
        task_ignore_result=True,
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        task_queues=queues,
        task_default_queue=settings.default_queue,
        # One job at a time per thread; the generator batches across threads.
        worker_prefetch_multiplier=1,
        task_time_limit=settings.job_time_limit_s,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_send_sent_event=False,
        include=["workers.tasks", "workers.drift_tasks"],
        beat_schedule={
            "audit-sweep": {"task": "assay.audit.sweep", "schedule": 60.0},
            # Orphaned jobs (their worker died) are re-queued or failed within a lease and a sweep.
            # A sweep nobody ran before the next is dropped, not piled up.
            "job-sweep": {
                "task": "assay.jobs.sweep",
                "schedule": settings.job_sweep_interval_s,
                "options": {"expires": settings.job_sweep_interval_s},
            },
            # In the same update: reading app.conf here would configure the app now, before
            # the embedded broker-folder hook below is connected.
            **drift_schedule(settings),
        },
    )
    # A task's thread is done with torch when the task ends: it gives its OpenMP pool back,
    # which would otherwise throttle the decode thread's (evaluators/runtime.py).
    task_postrun.connect(_release_openmp, weak=False, dispatch_uid="assay-release-openmp")
    if settings.embedded:
        folders = broker_folders(settings.data_dir)

        def make_broker_folders(**_: Any) -> None:
            for folder in folders.values():
                folder.mkdir(parents=True, exist_ok=True)

        # weak=False: the handler is a closure nothing else holds.
        app.on_after_configure.connect(make_broker_folders, weak=False)
    return app


def _release_openmp(**_: Any) -> None:
    release_openmp_threads()


app = create_celery()
