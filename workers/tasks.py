"""Thin Celery tasks: deserialize, call the pipeline, record, return.

Generation is made idempotent by the job store (an outcome is recorded once
per job id; a redelivered job that already finished is skipped), so it can
use ``acks_late``: a worker that dies mid-job gets its job redelivered
instead of losing it.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery.signals import worker_ready

from evaluators.contracts import GenerationJob, JobError, Status
from evaluators.errors import AssayError
from store.jobs import JobStore, job_store
from workers.audit import audit_runner, run_store
from workers.celery_app import app
from workers.pipeline import guarded_generation, warm_up
from workers.settings import worker_settings

log = logging.getLogger(__name__)


def _store() -> JobStore:
    return job_store(worker_settings().resolved_database_url())


@app.task(name="assay.generate", acks_late=True, reject_on_worker_lost=True)
def generate(message: dict[str, Any]) -> str:
    """Run one job; the outcome goes to the job store (the broker carries no results)."""
    job = GenerationJob.model_validate(message)
    job_id = str(job.job_id)
    store = _store()
    if not store.mark_running(job_id):
        # Cancelled before it started, or a redelivery of a finished job.
        log.info("job %s skipped: not queued or running", job_id)
        return "skipped"
    try:
        result = guarded_generation(job)
    except AssayError as exc:
        store.finish(job_id, Status.FAILED, error=JobError(code=exc.code, title=exc.title, detail=exc.detail))
        log.warning("job %s failed: %s", job_id, exc.code)
        return "failed"
    except Exception as exc:
        error = JobError(code="internal-error", title="Job failed", detail=f"{type(exc).__name__}: {exc}")
        store.finish(job_id, Status.FAILED, error=error)
        log.exception("job %s failed", job_id)
        raise
    store.finish(job_id, Status.SUCCEEDED, result=result)
    return result.action.value


@worker_ready.connect
def _warm_up_in_background(sender: Any = None, **_: Any) -> None:
    # Load policies' models and the default generator once the worker is up,
    # in a thread: jobs arriving meanwhile wait on the same load locks
    # instead of loading twice, and worker start-up is never blocked.
    # Only where tasks run in this process (threads or solo pool): a prefork
    # parent must not load models, nor touch CUDA, before it forks children.
    pool_module = type(getattr(sender, "pool", None)).__module__
    if pool_module not in {"celery.concurrency.thread", "celery.concurrency.solo"}:
        log.info("warm-up skipped for pool %s: children load models lazily", pool_module)
        return
    threading.Thread(target=warm_up, name="assay-warm-up", daemon=True).start()


def _enqueue_chunk(run_id: str, keys: list[str]) -> None:
    run = run_store().get_run(run_id)
    queue = run.queue if run is not None else worker_settings().default_queue
    audit_chunk.apply_async(args=[run_id, keys], queue=queue, routing_key=queue)


@app.task(name="assay.audit.start", acks_late=True, reject_on_worker_lost=True)
def audit_start(run_id: str) -> int:
    return audit_runner().start(run_id, _enqueue_chunk, worker_settings().audit_chunk_size)


@app.task(name="assay.audit.chunk", bind=True, acks_late=True, reject_on_worker_lost=True)
def audit_chunk(self: Any, run_id: str, keys: list[str]) -> int:
    return audit_runner().run_chunk(run_id, keys, worker=getattr(self.request, "hostname", None))


@app.task(name="assay.audit.sweep")
def audit_sweep() -> dict[str, int]:
    """Periodic (beat): re-send missing items of runs that stopped making progress."""
    settings = worker_settings()
    return audit_runner().sweep(_enqueue_chunk, settings.audit_chunk_size, settings.audit_stalled_after_s)
