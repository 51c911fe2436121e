"""The audit repository: runs and their per-item results, on the same database as jobs."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import func, select, update

from evaluators.contracts import Status
from store.db import Database, database, insert_ignore
from store.models import TERMINAL, AuditResult, AuditRun, ModelRecord, PolicyRecord, as_utc, utcnow
from store.records import AuditResultRecord, AuditRunRecord, PolicyVersion


class AuditStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create_run(
        self,
        *,
        run_id: str,
        suite_name: str,
        suite_sha256: str,
        suite: dict[str, Any],
        model: str,
        queue: str,
        policy: PolicyVersion,
        params: dict[str, Any],
        samples_per_prompt: int,
        total: int,
    ) -> AuditRunRecord:
        """Record a new queued run, and the policy version it runs under (once per sha256)."""
        with self.db.session() as s:
            insert_ignore(s, PolicyRecord.__table__, {**policy.model_dump(), "first_seen": utcnow()})
            run = AuditRun(
                id=run_id,
                status=Status.QUEUED,
                suite_name=suite_name,
                suite_sha256=suite_sha256,
                suite=suite,
                model=model,
                queue=queue,
                policy_name=policy.name,
                policy_sha256=policy.sha256,
                params=params,
                samples_per_prompt=samples_per_prompt,
                total=total,
            )
            s.add(run)
            s.flush()  # fills the column defaults (created_at)
            return AuditRunRecord.model_validate(run)

    def get_run(self, run_id: str) -> AuditRunRecord | None:
        with self.db.session() as s:
            run = s.get(AuditRun, run_id)
            return None if run is None else AuditRunRecord.model_validate(run)

    def mark_started(self, run_id: str) -> bool:
        with self.db.session() as s:
            res = s.execute(
                update(AuditRun)
                .where(AuditRun.id == run_id, AuditRun.status.in_([Status.QUEUED, Status.RUNNING]))
                .values(status=Status.RUNNING, started_at=func.coalesce(AuditRun.started_at, utcnow()))
            )
            return bool(res.rowcount)  # type: ignore[attr-defined]

    def done_keys(self, run_id: str) -> set[str]:
        with self.db.session() as s:
            return set(s.scalars(select(AuditResult.key).where(AuditResult.run_id == run_id)))

    def add_result(
        self,
        run_id: str,
        *,
        key: str,
        item_id: str,
        category: str,
        group: str | None,
        status: Status,
        result: dict[str, Any],
        worker: str | None,
    ) -> bool:
        """Record one item once; a second write of the same key is ignored (exactly once)."""
        with self.db.session() as s:
            return insert_ignore(
                s,
                AuditResult.__table__,
                {
                    "run_id": run_id,
                    "key": key,
                    "item_id": item_id,
                    "category": category,
                    "group": group,
                    "status": status,
                    "result": result,
                    "worker": worker,
                    "created_at": utcnow(),
                },
            )

    def count_results(self, run_id: str) -> int:
        with self.db.session() as s:
            return int(s.scalar(select(func.count()).where(AuditResult.run_id == run_id)) or 0)

    def results(self, run_id: str) -> list[AuditResultRecord]:
        with self.db.session() as s:
            rows = s.scalars(select(AuditResult).where(AuditResult.run_id == run_id).order_by(AuditResult.id))
            return [AuditResultRecord.model_validate(row) for row in rows]

    def last_result_at(self, run_id: str) -> dt.datetime | None:
        with self.db.session() as s:
            return s.scalar(select(func.max(AuditResult.created_at)).where(AuditResult.run_id == run_id))

    def record_model(self, run_id: str, info: dict[str, Any]) -> None:
        key = f"{info.get('id')}@{info.get('revision', '')}"
        with self.db.session() as s:
            insert_ignore(s, ModelRecord.__table__, {"key": key, "info": info, "first_seen": utcnow()})
            s.execute(
                update(AuditRun)
                .where(AuditRun.id == run_id, AuditRun.model_info.is_(None))
                .values(model_info=info)
            )

    def finish_run(self, run_id: str, status: Status, *, report: Any = None, error: Any = None) -> bool:
        """Record the run's outcome once (the first finisher wins)."""
        with self.db.session() as s:
            res = s.execute(
                update(AuditRun)
                .where(AuditRun.id == run_id, AuditRun.status.not_in(TERMINAL))
                .values(status=status, report=report, error=error, finished_at=utcnow())
            )
            return bool(res.rowcount)  # type: ignore[attr-defined]

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


def audit_store(url: str) -> AuditStore:
    """The audit repository on the process's shared ``Database`` for ``url``."""
    return AuditStore(database(url))
