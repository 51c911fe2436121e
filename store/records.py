"""Frozen records the repositories return: a row's values, detached from any session.

Built from ORM rows with ``model_validate(row)`` (``from_attributes``), so callers
outside ``store`` never hold an ORM object, nor lazy-load from a closed session.
JSON columns come back as the contracts that were written (``evaluators.contracts``);
audit runs come back as ``evaluators.contracts.AuditRun`` itself.
"""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, ConfigDict

from evaluators.contracts import JobError, JobResult, SamplingParams, Status


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


class PolicyVersion(_Record):
    """One policy file's content under its hash, recorded with the runs that use it."""

    sha256: str
    name: str
    version: str
    content: str
