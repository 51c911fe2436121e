"""The audit repository: runs and their per-item results, on the same database as jobs."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import func, select, update

from evaluators.contracts import (
    DEFAULT_TENANT,
    AuditItemResult,
    ModelInfo,
    PolicyIdentity,
    SamplingParams,
    Status,
)
from evaluators.contracts import AuditRun as AuditRunContract
from store.db import Database, database, insert_ignore
from store.models import (
    TERMINAL,
    AuditResult,
    AuditRun,
    ModelRecord,
    PolicyRecord,
    as_utc,
    utcnow,
)
from store.records import PolicyVersion
from store.retry import retried


class AuditStore:
    """Audit runs on ``db``; calls retry an unreachable database for ``retry_s`` s, then raise Unavailable."""

    def __init__(self, db: Database, *, retry_s: float = 0.0) -> None:
        self.db = db
        self.retry_s = retry_s

    @retried
    def create_run(
        self,
        *,
        run_id: str,
        suite_name: str,
        suite_sha256: str,
        suite: dict[str, Any],
        model: str,
        queue: str,
        policy: PolicyIdentity,
        policy_text: str,
        params: SamplingParams,
        samples_per_prompt: int,
        total: int,
        tenant: str = DEFAULT_TENANT,
    ) -> AuditRunContract:
        """Record a new queued run of ``tenant``, and the policy version it runs under (once per sha256)."""
        version = PolicyVersion(
            sha256=policy.sha256, name=policy.name, version=policy.version, content=policy_text
        )
        with self.db.session() as s:
            insert_ignore(s, PolicyRecord.__table__, {**version.model_dump(), "first_seen": utcnow()})
            run = AuditRun(
                id=run_id,
                tenant=tenant,
                status=Status.QUEUED,
                suite_name=suite_name,
                suite_sha256=suite_sha256,
                suite=suite,
                model=model,
                queue=queue,
                policy_name=policy.name,
                policy_sha256=policy.sha256,
                params=params.model_dump(mode="json"),
                samples_per_prompt=samples_per_prompt,
                total=total,
            )
            s.add(run)
            s.flush()  # fills the column defaults (created_at)
            return AuditRunContract.model_validate(run)

    @retried
    def get_run(self, run_id: str, tenant: str | None = None) -> AuditRunContract | None:
        """The run, or None when there is none (or, given ``tenant``, when another tenant owns it)."""
        with self.db.session() as s:
            run = s.get(AuditRun, run_id)
            if run is None or (tenant is not None and run.tenant != tenant):
                return None
            return AuditRunContract.model_validate(run)

    @retried
    def mark_started(self, run_id: str) -> bool:
        with self.db.session() as s:
            res = s.execute(
                update(AuditRun)
                .where(AuditRun.id == run_id, AuditRun.status.in_([Status.QUEUED, Status.RUNNING]))
                .values(status=Status.RUNNING, started_at=func.coalesce(AuditRun.started_at, utcnow()))
            )
            return bool(res.rowcount)  # type: ignore[attr-defined]

    @retried
    def done_keys(self, run_id: str) -> set[str]:
        with self.db.session() as s:
            return set(s.scalars(select(AuditResult.key).where(AuditResult.run_id == run_id)))

    @retried
    def add_result(self, run_id: str, result: AuditItemResult, *, status: Status, worker: str | None) -> int:
        """Record one item once (1); a second write of the same key is ignored (0): exactly once."""
        with self.db.session() as s:
            return insert_ignore(
                s,
                AuditResult.__table__,
                {
                    "run_id": run_id,
                    "key": result.key,
                    "item_id": result.item_id,
                    "category": result.category,
                    "group": result.group,
                    "status": status,
                    "result": result.to_json(),
                    "worker": worker,
                    "created_at": utcnow(),
                },
            )

    @retried
    def count_results(self, run_id: str) -> int:
        with self.db.session() as s:
            return int(s.scalar(select(func.count()).where(AuditResult.run_id == run_id)) or 0)

    @retried
    def results(self, run_id: str) -> list[AuditItemResult]:
        """The run's item results, in the order they were written."""
        with self.db.session() as s:
            query = select(AuditResult.result).where(AuditResult.run_id == run_id).order_by(AuditResult.id)
            return [AuditItemResult.model_validate(data) for data in s.scalars(query)]

    @retried
    def last_result_at(self, run_id: str) -> dt.datetime | None:
        with self.db.session() as s:
            return s.scalar(select(func.max(AuditResult.created_at)).where(AuditResult.run_id == run_id))

    @retried
    def record_model(self, run_id: str, model: ModelInfo) -> None:
        """Keep the model's identity, and set it on the run the first time a worker reports it."""
        info = model.model_dump(mode="json")
        key = f"{model.id}@{model.revision or ''}"
        with self.db.session() as s:
            insert_ignore(s, ModelRecord.__table__, {"key": key, "info": info, "first_seen": utcnow()})
            s.execute(
                update(AuditRun)
                .where(AuditRun.id == run_id, AuditRun.model_info.is_(None))
                .values(model_info=info)
            )

    @retried
    def finish_run(self, run_id: str, status: Status, *, report: Any = None, error: Any = None) -> bool:
        """Record the run's outcome once (the first finisher wins)."""
        with self.db.session() as s:
            res = s.execute(
                update(AuditRun)
                .where(AuditRun.id == run_id, AuditRun.status.not_in(TERMINAL))
                .values(status=status, report=report, error=error, finished_at=utcnow())
            )
            return bool(res.rowcount)  # type: ignore[attr-defined]

    @retried
    def stalled_runs(self, older_than_s: float) -> list[str]:
        """Running runs whose newest result (or start) is older than ``older_than_s``."""
        cutoff = utcnow() - dt.timedelta(seconds=older_than_s)
        with self.db.session() as s:
            columns = select(AuditRun.id, AuditRun.started_at, AuditRun.created_at)
            runs = s.execute(columns.where(AuditRun.status == Status.RUNNING)).all()
        stalled = []
        for run_id, started_at, created_at in runs:
            last = self.last_result_at(run_id) or started_at or created_at
            if last is not None and as_utc(last) < cutoff:
                stalled.append(run_id)
        return stalled


def audit_store(url: str, *, retry_s: float = 0.0) -> AuditStore:
    """The audit repository on the process's shared ``Database`` for ``url``."""
    return AuditStore(database(url, retry_s=retry_s), retry_s=retry_s)
