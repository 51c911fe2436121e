"""Frozen records the repositories return: a row's values, detached from any session.

Built from ORM rows with ``model_validate(row)`` (``from_attributes``), so callers
outside ``store`` never hold an ORM object, nor lazy-load from a closed session.
JSON columns come back as the contracts that were written (``evaluators.contracts``);
audit runs come back as ``evaluators.contracts.AuditRun`` itself.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict

from evaluators.contracts import DEFAULT_TENANT, JobError, JobResult, SamplingParams, Status
from store.models import as_utc


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, from_attributes=True)


class JobRecord(_Record):
    """A generation job as stored: its contract-typed parameters, result and error."""

    id: str
    kind: str
    status: Status
    model: str
    queue: str
    policy_name: str
    policy_sha256: str
    prompt_sha256: str
    params: SamplingParams
    raw_prompt: str | None
    result: JobResult | None
    error: JobError | None
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    attempts: int
    worker: str | None = None
    heartbeat_at: dt.datetime | None = None
    tenant: str = DEFAULT_TENANT


class PolicyVersion(_Record):
    """One policy file's content under its hash, recorded with the runs that use it."""

    sha256: str
    name: str
    version: str
    content: str


# SQLite hands back naive datetimes for timezone-aware columns; these records are always UTC-aware.
Utc = Annotated[dt.datetime, AfterValidator(as_utc)]


class TenantRecord(_Record):
    """A tenant: the policies its keys may use (None: all) and its quotas (None: the service's default)."""

    name: str
    policies: list[str] | None
    rate_per_min: int | None
    burst: int | None
    max_active_jobs: int | None
    created_at: Utc


class ApiKeyRecord(_Record):
    """An API key as stored: its hash, never its secret."""

    id: str
    tenant: str
    role: str
    name: str | None
    secret_hash: str
    created_at: Utc
    expires_at: Utc | None
    revoked_at: Utc | None
    last_used_at: Utc | None
