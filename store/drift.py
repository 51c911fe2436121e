"""The drift repository: events folded into per-hour sketches as they arrive, baselines and reports.

``write`` is the recorder's sink: one transaction per batch. Each ``DriftStore``
is one writer (a recording process) and only ever updates its own bucket rows,
so the API and every worker write side by side without row contention, and it
keeps its recent rows in memory so a batch costs one UPDATE per bucket, not a
read and a write. Reports read the buckets of a window and merge them.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import threading
import uuid
from collections.abc import Sequence

import numpy as np
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from evaluators.contracts import DEFAULT_TENANT
from evaluators.contracts.drift import (
    Baseline,
    DriftEvent,
    DriftReport,
    DriftReportRecord,
    DriftReportRequest,
    TimeRange,
)
from evaluators.drift.sketch import BucketKey, Merged, Sketch, aggregate, hour_of
from evaluators.errors import Conflict
from store.db import Database, database
from store.models import DriftBaseline, DriftBucket, DriftReportRow, as_utc, utcnow

_KEEP_HOURS = 3
"""Buckets this many hours older than the newest one written leave the in-memory cache."""


def _writer_id() -> str:
    return f"{socket.gethostname()[:60]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class DriftStore:
    def __init__(self, db: Database, *, seed: int | None = None, writer: str | None = None) -> None:
        self.db = db
        self.writer = writer or _writer_id()
        self._rng = np.random.default_rng(seed)
        self._cache: dict[BucketKey, tuple[int, Sketch]] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ events

    def write(self, events: Sequence[DriftEvent]) -> None:
        """Fold a batch of events into this writer's bucket rows, in one transaction."""
        groups = aggregate(events)
        with self._lock:
            try:
                with self.db.session() as s:
                    for key, group in groups.items():
                        row_id, sketch = self._load(s, key)
                        sketch.add(group, self._rng)
                        values = {
                            "count": sketch.count,
                            "sketch": sketch.to_json(),
                            "embeddings": sketch.reservoir_bytes(),
                            "updated_at": utcnow(),
                        }
                        if row_id is None:
                            row = DriftBucket(
                                hour=key.hour,
                                policy_name=key.policy,
                                model=key.model,
                                stage=key.stage,
                                source=key.source,
                                run_id=key.run_id,
                                writer=self.writer,
                                **values,
                            )
                            s.add(row)
                            s.flush()
                            row_id = row.id
                        else:
                            s.execute(update(DriftBucket).where(DriftBucket.id == row_id).values(**values))
                        self._cache[key] = (row_id, sketch)
            except Exception:
                # The cache may be ahead of the rolled-back rows: read them again next time.
                for key in groups:
                    self._cache.pop(key, None)
                raise
            self._evict()

    def _load(self, s: Session, key: BucketKey) -> tuple[int | None, Sketch]:
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        row = s.execute(
            select(DriftBucket.id, DriftBucket.sketch, DriftBucket.embeddings).where(
                DriftBucket.hour == key.hour,
                DriftBucket.policy_name == key.policy,
                DriftBucket.model == key.model,
                DriftBucket.stage == key.stage,
                DriftBucket.source == key.source,
                DriftBucket.run_id == key.run_id,
                DriftBucket.writer == self.writer,
            )
        ).first()
        if row is None:
            return None, Sketch()
        return row.id, Sketch.from_stored(row.sketch, row.embeddings)

    def _evict(self) -> None:
        if not self._cache:
            return
        newest = max(k.hour for k in self._cache)
        cutoff = newest - dt.timedelta(hours=_KEEP_HOURS)
        for key in [k for k in self._cache if k.hour < cutoff]:
            del self._cache[key]

    def sketches(
        self,
        policy: str,
        *,
        window: TimeRange | None = None,
        run_id: str = "",
        model: str | None = None,
    ) -> dict[str, Merged]:
        """Merged sketches per stage of the buckets in ``window`` (rounded out to whole hours).

        ``run_id`` empty reads live traffic (moderation and generation); an audit
        run's id reads that run's items, whatever the window.
        """
        query = select(DriftBucket.stage, DriftBucket.sketch, DriftBucket.embeddings).where(
            DriftBucket.policy_name == policy, DriftBucket.run_id == run_id
        )
        if window is not None:
            query = query.where(DriftBucket.hour >= hour_of(window.start), DriftBucket.hour < window.end)
        if model is not None:
            query = query.where(DriftBucket.model == model)
        out: dict[str, Merged] = {"input": Merged(), "output": Merged()}
        with self.db.session() as s:
            for stage, data, blob in s.execute(query):
                out[stage].add(Sketch.from_stored(data, blob))
        return out

    def count_events(self, policy: str) -> int:
        """Events stored for ``policy`` (all stages, sources and writers)."""
        with self.db.session() as s:
            total = s.scalar(select(func.sum(DriftBucket.count)).where(DriftBucket.policy_name == policy))
            return int(total or 0)

    # ------------------------------------------------------------------ baselines

    def create_baseline(self, baseline: Baseline) -> Baseline:
        """Store a named baseline; the name must be new for the policy."""
        try:
            with self.db.session() as s:
                row = DriftBaseline(
                    name=baseline.name,
                    policy_name=baseline.policy,
                    model=baseline.model,
                    start=baseline.start,
                    end=baseline.end,
                    audit_run=baseline.audit,
                )
                s.add(row)
                s.flush()
                return _baseline(row)
        except IntegrityError:
            raise Conflict(
                f"policy {baseline.policy!r} already has a baseline named {baseline.name!r}"
            ) from None

    def baselines(self, policy: str | None = None) -> list[Baseline]:
        """Baselines, newest first."""
        query = select(DriftBaseline).order_by(DriftBaseline.created_at.desc(), DriftBaseline.id.desc())
        if policy is not None:
            query = query.where(DriftBaseline.policy_name == policy)
        with self.db.session() as s:
            return [_baseline(r) for r in s.scalars(query)]

    def baseline(self, policy: str, name: str) -> Baseline | None:
        with self.db.session() as s:
            row = s.scalars(
                select(DriftBaseline).where(DriftBaseline.policy_name == policy, DriftBaseline.name == name)
            ).first()
            return None if row is None else _baseline(row)

    def current_baseline(self, policy: str, model: str = "", name: str | None = None) -> Baseline | None:
        """The named baseline, else the newest one for this model (or for any model)."""
        if name is not None:
            return self.baseline(policy, name)
        for b in self.baselines(policy):
            if b.model is None or b.model == model:
                return b
        return None

    # ------------------------------------------------------------------ reports

    def create_report(
        self, report_id: str, request: DriftReportRequest, trigger: str, tenant: str = DEFAULT_TENANT
    ) -> DriftReportRecord:
        with self.db.session() as s:
            row = DriftReportRow(
                id=report_id,
                tenant=tenant,
                status="queued",
                policy_name=request.policy,
                model=request.model,
                trigger=trigger,
                request=request.model_dump(mode="json", by_alias=True),
            )
            s.add(row)
            s.flush()
            return _record(row)

    def mark_report_running(self, report_id: str) -> bool:
        with self.db.session() as s:
            res = s.execute(
                update(DriftReportRow)
                .where(DriftReportRow.id == report_id, DriftReportRow.status.in_(["queued", "running"]))
                .values(status="running", started_at=utcnow())
            )
            return bool(res.rowcount)  # type: ignore[attr-defined]

    def finish_report(self, report_id: str, report: DriftReport) -> bool:
        return self._finish(report_id, status="succeeded", report=report.to_json())

    def fail_report(self, report_id: str, error: str) -> bool:
        return self._finish(report_id, status="failed", error=error)

    def _finish(self, report_id: str, **values: object) -> bool:
        with self.db.session() as s:
            res = s.execute(
                update(DriftReportRow)
                .where(DriftReportRow.id == report_id, DriftReportRow.status.in_(["queued", "running"]))
                .values(finished_at=utcnow(), **values)
            )
            return bool(res.rowcount)  # type: ignore[attr-defined]

    def set_alert(self, report_id: str, alert: dict[str, object]) -> None:
        with self.db.session() as s:
            s.execute(update(DriftReportRow).where(DriftReportRow.id == report_id).values(alert=alert))

    def report(self, report_id: str, tenant: str | None = None) -> DriftReportRecord | None:
        """The report, or None when there is none (or, given ``tenant``, when another tenant owns it)."""
        with self.db.session() as s:
            row = s.get(DriftReportRow, report_id)
            if row is None or (tenant is not None and row.tenant != tenant):
                return None
            return _record(row)

    def reports(
        self,
        policy: str | None = None,
        *,
        trigger: str | None = None,
        limit: int = 50,
        tenant: str | None = None,
    ) -> list[DriftReportRecord]:
        """Reports, newest first; only ``tenant``'s when given."""
        query = select(DriftReportRow).order_by(DriftReportRow.created_at.desc()).limit(limit)
        if tenant is not None:
            query = query.where(DriftReportRow.tenant == tenant)
        if policy is not None:
            query = query.where(DriftReportRow.policy_name == policy)
        if trigger is not None:
            query = query.where(DriftReportRow.trigger == trigger)
        with self.db.session() as s:
            return [_record(r) for r in s.scalars(query)]


def _baseline(row: DriftBaseline) -> Baseline:
    return Baseline(
        name=row.name,
        policy=row.policy_name,
        model=row.model,
        start=as_utc(row.start) if row.start else None,
        end=as_utc(row.end) if row.end else None,
        audit=row.audit_run,
        created_at=as_utc(row.created_at),
    )


def _record(row: DriftReportRow) -> DriftReportRecord:
    return DriftReportRecord(
        id=row.id,
        status=row.status,  # type: ignore[arg-type]
        policy=row.policy_name,
        model=row.model,
        trigger=row.trigger,  # type: ignore[arg-type]
        request=DriftReportRequest.model_validate(row.request),
        report=DriftReport.model_validate(row.report) if row.report is not None else None,
        error=row.error,
        alert=row.alert,
        created_at=as_utc(row.created_at),
        finished_at=as_utc(row.finished_at) if row.finished_at else None,
    )


_stores: dict[str, DriftStore] = {}
_stores_lock = threading.Lock()


def drift_store(url: str) -> DriftStore:
    """The process's drift repository (one writer) on the shared ``Database`` for ``url``."""
    with _stores_lock:
        store = _stores.get(url)
        if store is None or store.db is not database(url):
            store = _stores[url] = DriftStore(database(url))
        return store
