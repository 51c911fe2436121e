"""The durable job store (SQLAlchemy 2): SQLite embedded, PostgreSQL in production.

Jobs live here, not only in the broker, so a job is never lost silently: the
API records it before queueing, the worker records each transition, and a
failure is stored with its reason. Records hold hashes, redacted text and
scores; raw text only when the policy opts in (``store_raw_text``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    select,
    update,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = (
    "queued",
    "running",
    "succeeded",
    "failed",
    "cancelled",
)
TERMINAL = {SUCCEEDED, FAILED, CANCELLED}


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON}


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), default="generation")
    status: Mapped[str] = mapped_column(String(16), index=True)
    model: Mapped[str] = mapped_column(String(256))
    queue: Mapped[str] = mapped_column(String(64))
    policy_name: Mapped[str] = mapped_column(String(64))
    policy_sha256: Mapped[str] = mapped_column(String(64))
    prompt_sha256: Mapped[str] = mapped_column(String(64))
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    raw_prompt: Mapped[str | None] = mapped_column(Text, nullable=True)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    attempts: Mapped[int] = mapped_column(default=0)


class AuditRun(Base):
    """One pre-release audit: a suite through a model under a policy."""

    __tablename__ = "audit_runs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    suite_name: Mapped[str] = mapped_column(String(128))
    suite_sha256: Mapped[str] = mapped_column(String(64))
    suite: Mapped[dict[str, Any]] = mapped_column(JSON)
    model: Mapped[str] = mapped_column(String(256))
    queue: Mapped[str] = mapped_column(String(64))
    policy_name: Mapped[str] = mapped_column(String(64))
    policy_sha256: Mapped[str] = mapped_column(String(64))
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    samples_per_prompt: Mapped[int] = mapped_column(default=1)
    total: Mapped[int] = mapped_column(default=0)
    model_info: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    report: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class AuditResult(Base):
    """One work item's outcome; (run_id, key) is unique so each item counts once."""

    __tablename__ = "audit_results"
    __table_args__ = (UniqueConstraint("run_id", "key", name="uq_audit_results_run_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("audit_runs.id", ondelete="CASCADE"), index=True
    )
    key: Mapped[str] = mapped_column(String(256))
    item_id: Mapped[str] = mapped_column(String(128))
    category: Mapped[str] = mapped_column(String(128))
    group: Mapped[str | None] = mapped_column(String(128), nullable=True)
    status: Mapped[str] = mapped_column(String(16))
    result: Mapped[dict[str, Any]] = mapped_column(JSON)
    worker: Mapped[str | None] = mapped_column(String(256), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class PolicyRecord(Base):
    """Every policy version ever used, by content hash, so reports stay reproducible."""

    __tablename__ = "policies"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(32))
    content: Mapped[str] = mapped_column(Text)
    first_seen: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ModelRecord(Base):
    """Identity of each model version that produced results (id plus file hash)."""

    __tablename__ = "models"

    key: Mapped[str] = mapped_column(String(320), primary_key=True)
    info: Mapped[dict[str, Any]] = mapped_column(JSON)
    first_seen: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class JobStore:
    """Job records and their transitions; every transition is one short transaction."""

    def __init__(self, url: str) -> None:
        self.url = url
        connect_args: dict[str, Any] = {}
        sqlite_path = make_url(url).database if url.startswith("sqlite") else None
        if sqlite_path and sqlite_path != ":memory:":
            Path(sqlite_path).parent.mkdir(parents=True, exist_ok=True)
        if url.startswith("sqlite"):
            # API and worker are separate processes: wait for locks instead of failing.
            connect_args = {"timeout": 30, "check_same_thread": False}
        self.engine: Engine = create_engine(url, connect_args=connect_args, pool_pre_ping=True)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        migrate(self.engine)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions.begin() as s:
            yield s

    def create(self, job: Job) -> Job:
        with self.session() as s:
            s.add(job)
        return job

    def get(self, job_id: str) -> Job | None:
        with self.session() as s:
            return s.get(Job, job_id)

    def mark_running(self, job_id: str) -> bool:
        """Move queued -> running; False when the job is cancelled or already finished."""
        with self.session() as s:
            res = s.execute(
                update(Job)
                .where(Job.id == job_id, Job.status.in_([QUEUED, RUNNING]))
                .values(status=RUNNING, started_at=utcnow(), attempts=Job.attempts + 1)
            )
            return bool(res.rowcount)  # type: ignore[attr-defined]

    def finish(self, job_id: str, status: str, *, result: Any = None, error: Any = None) -> bool:
        """Record the outcome once: a job already terminal keeps its first outcome."""
        with self.session() as s:
            res = s.execute(
                update(Job)
                .where(Job.id == job_id, Job.status.not_in(TERMINAL))
                .values(status=status, result=result, error=error, finished_at=utcnow())
            )
            return bool(res.rowcount)  # type: ignore[attr-defined]

    def cancel(self, job_id: str) -> bool:
        return self.finish(job_id, CANCELLED, error={"reason": "cancelled by request"})

    def is_cancelled(self, job_id: str) -> bool:
        with self.session() as s:
            status = s.scalar(select(Job.status).where(Job.id == job_id))
            return status == CANCELLED

    def dispose(self) -> None:
        self.engine.dispose()


MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_migrate_lock = threading.Lock()


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision (idempotent)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with _migrate_lock:
        for attempt in range(3):
            try:
                with engine.begin() as connection:
                    cfg.attributes["connection"] = connection
                    command.upgrade(cfg, "head")
                return
            except Exception:
                # Another process (API or worker) may be migrating the same database.
                if attempt == 2:
                    raise
                time.sleep(0.5 * (attempt + 1))


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


_stores: dict[str, JobStore] = {}
_lock = threading.Lock()


def job_store(url: str) -> JobStore:
    """One store (and connection pool) per URL per process."""
    with _lock:
        if url not in _stores:
            _stores[url] = JobStore(url)
        return _stores[url]


# ------------------------------------------------------------------ audit runs


def _insert_ignore(session: Session, table: Any, values: dict[str, Any]) -> bool:
    """INSERT that does nothing on a unique conflict; True when a row was written."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        stmt: Any = pg_insert(table).values(**values).on_conflict_do_nothing()
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        stmt = sqlite_insert(table).values(**values).on_conflict_do_nothing()
    else:  # pragma: no cover - other databases are not supported targets
        raise RuntimeError(f"unsupported database {dialect}")
    # rowcount is -1 for this statement under psycopg 3; RETURNING says it for certain.
    stmt = stmt.returning(*table.primary_key.columns)
    return session.execute(stmt).first() is not None


class AuditStore:
    """Audit runs and their per-item results, on the same database as jobs."""

    def __init__(self, store: JobStore) -> None:
        self.store = store

    def create_run(self, run: AuditRun, policy: PolicyRecord) -> AuditRun:
        with self.store.session() as s:
            _insert_ignore(
                s,
                PolicyRecord.__table__,
                {
                    "sha256": policy.sha256,
                    "name": policy.name,
                    "version": policy.version,
                    "content": policy.content,
                    "first_seen": utcnow(),
                },
            )
            s.add(run)
        return run

    def get_run(self, run_id: str) -> AuditRun | None:
        with self.store.session() as s:
            return s.get(AuditRun, run_id)

    def mark_started(self, run_id: str) -> bool:
        with self.store.session() as s:
            res = s.execute(
                update(AuditRun)
                .where(AuditRun.id == run_id, AuditRun.status.in_([QUEUED, RUNNING]))
                .values(status=RUNNING, started_at=func.coalesce(AuditRun.started_at, utcnow()))
            )
            return bool(res.rowcount)  # type: ignore[attr-defined]

    def status(self, run_id: str) -> str | None:
        with self.store.session() as s:
            return s.scalar(select(AuditRun.status).where(AuditRun.id == run_id))

    def done_keys(self, run_id: str) -> set[str]:
        with self.store.session() as s:
            return set(s.scalars(select(AuditResult.key).where(AuditResult.run_id == run_id)))

    def add_result(
        self,
        run_id: str,
        *,
        key: str,
        item_id: str,
        category: str,
        group: str | None,
        status: str,
        result: dict[str, Any],
        worker: str | None,
    ) -> bool:
        """Record one item once; a second write of the same key is ignored (exactly once)."""
        with self.store.session() as s:
            return _insert_ignore(
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
        with self.store.session() as s:
            return int(s.scalar(select(func.count()).where(AuditResult.run_id == run_id)) or 0)

    def results(self, run_id: str) -> list[AuditResult]:
        with self.store.session() as s:
            return list(
                s.scalars(select(AuditResult).where(AuditResult.run_id == run_id).order_by(AuditResult.id))
            )

    def last_result_at(self, run_id: str) -> dt.datetime | None:
        with self.store.session() as s:
            return s.scalar(select(func.max(AuditResult.created_at)).where(AuditResult.run_id == run_id))

    def record_model(self, run_id: str, info: dict[str, Any]) -> None:
        key = f"{info.get('id')}@{info.get('revision', '')}"
        with self.store.session() as s:
            _insert_ignore(s, ModelRecord.__table__, {"key": key, "info": info, "first_seen": utcnow()})
            s.execute(
                update(AuditRun)
                .where(AuditRun.id == run_id, AuditRun.model_info.is_(None))
                .values(model_info=info)
            )

    def finish_run(self, run_id: str, status: str, *, report: Any = None, error: Any = None) -> bool:
        """Record the run's outcome once (the first finisher wins)."""
        with self.store.session() as s:
            res = s.execute(
                update(AuditRun)
                .where(AuditRun.id == run_id, AuditRun.status.not_in(TERMINAL))
                .values(status=status, report=report, error=error, finished_at=utcnow())
            )
            return bool(res.rowcount)  # type: ignore[attr-defined]

    def stalled_runs(self, older_than_s: float) -> list[str]:
        """Running runs whose newest result (or start) is older than ``older_than_s``."""
        cutoff = utcnow() - dt.timedelta(seconds=older_than_s)
        with self.store.session() as s:
            runs = list(s.scalars(select(AuditRun).where(AuditRun.status == RUNNING)))
        stalled = []
        for run in runs:
            last = self.last_result_at(run.id) or run.started_at or run.created_at
            if last is not None and _aware(last) < cutoff:
                stalled.append(run.id)
        return stalled


def _aware(value: dt.datetime) -> dt.datetime:
    # SQLite hands back naive datetimes for timezone-aware columns.
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
