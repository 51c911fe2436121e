"""The job repository: a job's record and its transitions, each one short transaction."""

from __future__ import annotations

from sqlalchemy import update

from evaluators.contracts import JobError, JobResult, SamplingParams, Status
from store.db import Database, database
from store.models import TERMINAL, Job, utcnow
from store.records import JobRecord


class JobStore:
    def __init__(self, db: Database) -> None:
        self.db = db

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
    ) -> JobRecord:
        """Record a new queued job (before it is queued, so it is never lost silently)."""
        with self.db.session() as s:
            job = Job(
                id=job_id,
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

    def get(self, job_id: str) -> JobRecord | None:
        with self.db.session() as s:
            job = s.get(Job, job_id)
            return None if job is None else JobRecord.model_validate(job)

    def mark_running(self, job_id: str) -> bool:
        """Move queued -> running; False when the job is cancelled or already finished."""
        with self.db.session() as s:
            res = s.execute(
                update(Job)
                .where(Job.id == job_id, Job.status.in_([Status.QUEUED, Status.RUNNING]))
                .values(status=Status.RUNNING, started_at=utcnow(), attempts=Job.attempts + 1)
            )
            return bool(res.rowcount)  # type: ignore[attr-defined]

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


def job_store(url: str) -> JobStore:
    """The job repository on the process's shared ``Database`` for ``url``."""
    return JobStore(database(url))
