"""The ORM tables. Only the repositories in this package touch them."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, DateTime, ForeignKey, Index, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from evaluators.contracts import DEFAULT_TENANT, Status

# The statuses a job or run never leaves; a finished outcome is never overwritten.
TERMINAL = [s.value for s in Status if s.terminal]


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def as_utc(value: dt.datetime) -> dt.datetime:
    """``value`` as an aware datetime: SQLite hands back naive ones for timezone-aware columns."""
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _tenant_column() -> Any:
    """The tenant that owns a row; only its keys see it (migration 0004)."""
    return mapped_column(String(64), default=DEFAULT_TENANT, server_default=DEFAULT_TENANT, index=True)


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
    # The lease: which worker process runs the job, and when it last said it still does.
    worker: Mapped[str | None] = mapped_column(String(256), nullable=True)
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    tenant: Mapped[str] = _tenant_column()


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
    tenant: Mapped[str] = _tenant_column()


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


class DriftBucket(Base):
    """One hour of drift events of one writer (a recording process), pre-aggregated (a sketch).

    Each recording process writes only its own rows (``writer``), so concurrent
    processes never contend for a row; reports sum over writers.
    """

    __tablename__ = "drift_buckets"
    __table_args__ = (
        UniqueConstraint(
            "hour", "policy_name", "model", "stage", "source", "run_id", "writer", name="uq_drift_buckets_key"
        ),
        Index("ix_drift_buckets_policy_hour", "policy_name", "hour"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    hour: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    policy_name: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(256))
    stage: Mapped[str] = mapped_column(String(8))
    source: Mapped[str] = mapped_column(String(16))
    run_id: Mapped[str] = mapped_column(String(64))
    writer: Mapped[str] = mapped_column(String(128))
    count: Mapped[int] = mapped_column(Integer)
    sketch: Mapped[dict[str, Any]] = mapped_column(JSON)
    embeddings: Mapped[bytes] = mapped_column(LargeBinary)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class DriftBaseline(Base):
    """A named baseline: a window of live events or an audit run, per policy (and model)."""

    __tablename__ = "drift_baselines"
    __table_args__ = (UniqueConstraint("policy_name", "name", name="uq_drift_baselines_policy_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64))
    policy_name: Mapped[str] = mapped_column(String(64))
    model: Mapped[str | None] = mapped_column(String(256), nullable=True)
    start: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    end: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    audit_run: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class DriftReportRow(Base):
    """A drift report: its request, status, the finished report and the alert sent for it."""

    __tablename__ = "drift_reports"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    policy_name: Mapped[str] = mapped_column(String(64))
    model: Mapped[str | None] = mapped_column(String(256), nullable=True)
    trigger: Mapped[str] = mapped_column(String(16))
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    report: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    alert: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    tenant: Mapped[str] = _tenant_column()


class Tenant(Base):
    """A customer of the service: which policies its keys may use and its quotas."""

    __tablename__ = "tenants"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    # None: every loaded policy; else only these names (others answer 404).
    policies: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    rate_per_min: Mapped[int | None] = mapped_column(Integer, nullable=True)
    burst: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_active_jobs: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ApiKey(Base):
    """An API key: only a salted scrypt hash of its secret is kept, never the secret."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64), ForeignKey("tenants.name"), index=True)
    role: Mapped[str] = mapped_column(String(16))
    name: Mapped[str | None] = mapped_column(String(128), nullable=True)
    secret_hash: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
