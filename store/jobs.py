"""The job repository: a job's record and its transitions, each one short transaction.

A running job holds a lease: the worker process that claimed it (``worker``)
renews ``heartbeat_at`` while it runs. A job whose heartbeat is older than the
lease is presumed orphaned (its worker died); the sweep re-queues or fails it,
and any worker may claim it again. Outcomes are still recorded once.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection

from sqlalchemy import ColumnElement, and_, func, or_, select, update

from evaluators.contracts import DEFAULT_TENANT, JobError, JobResult, SamplingParams, Status
from store.db import Database, database
from store.models import TERMINAL, Job, utcnow
from store.records import JobRecord
from store.retry import retried


def _stale(lease_s: float) -> ColumnElement[bool]:
    """Running, and no heartbeat (nor start, for rows from before leases) within ``lease_s``."""
    cutoff = utcnow() - dt.timedelta(seconds=lease_s)
    return and_(Job.status == Status.RUNNING, func.coalesce(Job.heartbeat_at, Job.started_at) < cutoff)


class JobStore:
    """Jobs on ``db``; calls retry an unreachable database for ``retry_s`` seconds, then raise Unavailable."""

    def __init__(self, db: Database, *, retry_s: float = 0.0) -> None:
        self.db = db
        self.retry_s = retry_s

    @retried
    def create(
        self,
        *,
        job_id: str,
        model: str,
        queue: str,
        policy_name: str,
        policy_sha256: str,
        prompt_sha256: str,
        params: SamplingParams,
        raw_prompt: str | None = None,
        tenant: str = DEFAULT_TENANT,
    ) -> JobRecord:
        """Record a new queued job of ``tenant`` (before it is queued, so it is never lost silently)."""
        with self.db.session() as s:
            job = Job(
                id=job_id,
                tenant=tenant,
                status=Status.QUEUED,
                model=model,
                queue=queue,
                policy_name=policy_name,
                policy_sha256=policy_sha256,
                prompt_sha256=prompt_sha256,
                params=params.model_dump(mode="json"),
                raw_prompt=raw_prompt,
            )
            s.add(job)
            s.flush()  # fills the column defaults (kind, created_at, attempts)
            return JobRecord.model_validate(job)

    @retried
    def get(self, job_id: str, tenant: str | None = None) -> JobRecord | None:
        """The job, or None when there is none (or, given ``tenant``, when another tenant owns it)."""
        with self.db.session() as s:
            job = s.get(Job, job_id)
            if job is None or (tenant is not None and job.tenant != tenant):
                return None
            return JobRecord.model_validate(job)

    @retried
    def count_active(self, tenant: str) -> int:
        """The tenant's jobs that are queued or running (its quota counts them)."""
        with self.db.session() as s:
            query = select(func.count()).where(Job.tenant == tenant, Job.status.not_in(TERMINAL))
            return int(s.scalar(query) or 0)

    @retried
    def claim(self, job_id: str, worker: str, lease_s: float) -> bool:
        """Take the job's lease: queued -> running, or running with a lapsed lease (its worker died).

        False when it is cancelled or finished, or another live worker runs it
        (a duplicate delivery), so a job never runs twice at once.
        """
        now = utcnow()
        with self.db.session() as s:
            res = s.execute(
                update(Job)
                .where(Job.id == job_id, or_(Job.status == Status.QUEUED, _stale(lease_s)))
                .values(
                    status=Status.RUNNING,
                    started_at=now,
                    heartbeat_at=now,
                    worker=worker,
                    attempts=Job.attempts + 1,
                )
            )
            return bool(res.rowcount)  # type: ignore[attr-defined]

    @retried
    def heartbeat(self, job_ids: Collection[str], worker: str) -> int:
        """Renew the lease of the running jobs ``worker`` holds; returns how many it still holds."""
        if not job_ids:
            return 0
        with self.db.session() as s:
            res = s.execute(
                update(Job)
                .where(Job.id.in_(list(job_ids)), Job.status == Status.RUNNING, Job.worker == worker)
                .values(heartbeat_at=utcnow())
            )
            return int(res.rowcount)  # type: ignore[attr-defined]

    @retried
    def stale(self, lease_s: float) -> list[JobRecord]:
        """Running jobs whose lease lapsed: their worker sent no heartbeat for ``lease_s`` seconds."""
        with self.db.session() as s:
            return [JobRecord.model_validate(j) for j in s.scalars(select(Job).where(_stale(lease_s)))]

    @retried
    def release(self, job_id: str, lease_s: float) -> bool:
        """Put a job with a lapsed lease back to queued (its message was re-sent); False if it moved on."""
        with self.db.session() as s:
            res = s.execute(
                update(Job)
                .where(Job.id == job_id, _stale(lease_s))
                .values(status=Status.QUEUED, worker=None, heartbeat_at=None)
            )
            return bool(res.rowcount)  # type: ignore[attr-defined]

    @retried
    def fail_stale(self, job_id: str, lease_s: float, error: JobError) -> bool:
        """Fail a job whose lease lapsed, with the reason; False when a worker took it meanwhile."""
        values = {"status": Status.FAILED, "error": error.model_dump(mode="json", exclude_none=True)}
        with self.db.session() as s:
            res = s.execute(
                update(Job).where(Job.id == job_id, _stale(lease_s)).values(**values, finished_at=utcnow())
            )
            return bool(res.rowcount)  # type: ignore[attr-defined]

    @retried
    def count_by_status(self) -> dict[str, int]:
        """How many jobs are in each status."""
        with self.db.session() as s:
            rows = s.execute(select(Job.status, func.count()).group_by(Job.status)).all()
        return {str(status): int(n) for status, n in rows}

    @retried
    def finish(
        self, job_id: str, status: Status, *, result: JobResult | None = None, error: JobError | None = None
    ) -> bool:
        """Record the outcome once: a job already terminal keeps its first outcome."""
        values = {
            "status": status,
            "result": result.to_json() if result is not None else None,
            "error": error.model_dump(mode="json", exclude_none=True) if error is not None else None,
            "finished_at": utcnow(),
        }
        with self.db.session() as s:
            res = s.execute(update(Job).where(Job.id == job_id, Job.status.not_in(TERMINAL)).values(**values))
            return bool(res.rowcount)  # type: ignore[attr-defined]

    def cancel(self, job_id: str) -> bool:
        return self.finish(job_id, Status.CANCELLED, error=JobError(reason="cancelled by request"))


def job_store(url: str, *, retry_s: float = 0.0) -> JobStore:
    """The job repository on the process's shared ``Database`` for ``url``."""
    return JobStore(database(url, retry_s=retry_s), retry_s=retry_s)
