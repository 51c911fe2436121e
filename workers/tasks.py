"""Thin Celery tasks: deserialize, call the pipeline, record, return.

Generation is made idempotent by the job store (an outcome is recorded once
per job id; a redelivered job that already finished, or that a live worker
runs, is skipped), so it can use ``acks_late``. A worker that dies mid-job
stops renewing the job's lease, and the periodic job sweep re-queues or fails
it (``workers/leases.py``) long before the broker's visibility timeout.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from typing import Any

from celery.signals import worker_init, worker_ready

from evaluators.contracts import GenerationJob, JobError, Status
from evaluators.errors import AssayError, ConfigError, Unavailable
from store.jobs import JobStore, job_store
from workers.audit import audit_runner, run_store
from workers.celery_app import app
from workers.generation import require_engine
from workers.leases import Leases, RedisRedeliverer, sweep_jobs
from workers.metrics import GENERATION_BATCH_ROWS, JOB_SECONDS, JOBS_FINISHED, SWEPT, serve_worker_metrics
from workers.pipeline import guarded_generation, warm_up
from workers.settings import worker_settings
from workers.streams import signal_done
from workers.tracing import annotate

log = logging.getLogger(__name__)


def _store() -> JobStore:
    settings = worker_settings()
    return job_store(settings.resolved_database_url(), retry_s=settings.store_retry_s)


@functools.cache
def _leases() -> Leases:
    """This process's lease keeper (one heartbeat thread per worker process)."""
    return Leases(_store, worker_settings().heartbeat_interval_s)


@app.task(name="assay.generate", bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=5)
def generate(self: Any, message: dict[str, Any]) -> str:
    """Run one job; the outcome goes to the job store (the broker carries no results)."""
    job = GenerationJob.model_validate(message)
    settings = worker_settings()
    try:
        return _run_job(job, _leases())
    except Unavailable as exc:
        # The database stayed down through the store's retries. Try the whole job again once
        # this process's lease on it has lapsed, so any worker may claim it.
        log.warning("job %s: %s; retrying", job.job_id, exc.detail)
        raise self.retry(exc=exc, countdown=settings.job_lease_s + settings.heartbeat_interval_s) from exc


def _run_job(job: GenerationJob, leases: Leases) -> str:
    job_id = str(job.job_id)
    store = _store()
    if not store.claim(job_id, leases.worker, worker_settings().job_lease_s):
        # Cancelled before it started, finished already, or run by a live worker right now.
        log.info("job %s skipped: finished, cancelled or held by a live worker", job_id)
        return "skipped"
    started = time.perf_counter()
    try:
        with leases.holding(job_id):
            outcome = _guarded(job_id, job, store)
    finally:
        signal_done(worker_settings(), job_id)  # the API's waiting request reads the store at once
    elapsed = time.perf_counter() - started
    JOB_SECONDS.observe(elapsed)
    # On the task's span: which job, and what became of it (an action or 'failed', never text).
    annotate({"assay.job.id": job_id, "assay.job.outcome": outcome, "assay.policy": job.policy})
    log.info("job %s finished: %s in %.2f s", job_id, outcome, elapsed)
    return outcome


def _guarded(job_id: str, job: GenerationJob, store: JobStore) -> str:
    try:
        result = guarded_generation(job)
    except AssayError as exc:
        store.finish(job_id, Status.FAILED, error=JobError(code=exc.code, title=exc.title, detail=exc.detail))
        JOBS_FINISHED.labels(Status.FAILED.value).inc()
        log.warning("job %s failed: %s", job_id, exc.code)
        return "failed"
    except Exception as exc:
        error = JobError(code="internal-error", title="Job failed", detail=f"{type(exc).__name__}: {exc}")
        store.finish(job_id, Status.FAILED, error=error)
        JOBS_FINISHED.labels(Status.FAILED.value).inc()
        log.exception("job %s failed", job_id)
        raise
    store.finish(job_id, Status.SUCCEEDED, result=result)
    JOBS_FINISHED.labels(Status.SUCCEEDED.value).inc()
    if result.batch_rows:
        GENERATION_BATCH_ROWS.observe(result.batch_rows)
    return result.action.value


@worker_init.connect
def _require_engine(**_: Any) -> None:
    # A worker that cannot run its generator engine stops at start-up, saying how to install it,
    # rather than failing every job. SystemExit: Celery logs and swallows a handler's exceptions.
    try:
        require_engine(worker_settings().generator_engine)
    except ConfigError as exc:
        log.critical("%s", exc.detail)
        raise SystemExit(f"assay worker cannot start: {exc.detail}") from exc


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


@worker_ready.connect
def _serve_metrics(**_: Any) -> None:
    serve_worker_metrics(worker_settings().metrics_port)


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


@app.task(name="assay.jobs.sweep")
def jobs_sweep() -> dict[str, int]:
    """Periodic (beat): re-queue or fail running jobs whose worker stopped renewing their lease."""
    settings = worker_settings()
    broker = None if settings.embedded else RedisRedeliverer(app)
    lease_s, max_attempts = settings.job_lease_s, settings.job_max_attempts
    report = sweep_jobs(_store(), broker, lease_s=lease_s, max_attempts=max_attempts)
    SWEPT.labels("requeued").inc(len(report.requeued))
    SWEPT.labels("failed").inc(len(report.failed))
    return report.as_dict()


@app.task(name="assay.audit.sweep")
def audit_sweep() -> dict[str, int]:
    """Periodic (beat): re-send missing items of runs that stopped making progress."""
    settings = worker_settings()
    return audit_runner().sweep(_enqueue_chunk, settings.audit_chunk_size, settings.audit_stalled_after_s)
