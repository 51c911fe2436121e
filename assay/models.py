"""What the client returns: the API's answers as typed models.

Job results are the service's own contract (``evaluators.contracts.JobResult``);
the envelopes around them are open models (fields a newer server adds are
kept, not refused), so an older client keeps working against a newer server.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from evaluators.contracts import FindingRecord, JobResult, Status
from evaluators.findings import Action


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class PolicyRef(_Open):
    """Which policy decided (the version where the answer names it)."""

    name: str
    sha256: str
    version: str | None = None


class Moderation(_Open):
    """``POST /v1/moderate``: what the policy decided about one text."""

    action: Action
    text: str | None = Field(description="The filtered text; None when blocked.")
    findings: list[FindingRecord] = Field(default_factory=list)
    scores: dict[str, float] = Field(default_factory=dict)
    engines: dict[str, str] = Field(default_factory=dict)
    errors: list[dict[str, Any]] = Field(default_factory=list)
    policy: PolicyRef | None = None
    stage: str | None = None
    elapsed_ms: float | None = None


class ModerationBatch(_Open):
    """``POST /v1/moderate/batch``: one decision per text, in order."""

    results: list[Moderation]
    policy: PolicyRef
    stage: str
    elapsed_ms: float


class Problem(_Open):
    """Why a job failed or was cancelled (problem details)."""

    type: str
    title: str
    status: int
    detail: str = ""


class Job(_Open):
    """A generation job: its status and, once it succeeded, its result."""

    id: str
    status: Status
    model: str | None = None
    policy: PolicyRef | None = None
    result: JobResult | None = None
    error: Problem | None = None
    attempts: int | None = None
    links: dict[str, str] = Field(default_factory=dict)

    @property
    def terminal(self) -> bool:
        return self.status.terminal


class Audit(_Open):
    """An audit run: status, progress and, when finished, its verdict."""

    id: str
    status: Status
    progress: dict[str, Any] | None = None
    links: dict[str, str] = Field(default_factory=dict)

    @property
    def terminal(self) -> bool:
        return self.status.terminal


class Policy(_Open):
    """A loaded policy as ``GET /v1/policies`` lists it."""

    name: str
    version: str
    sha256: str
    description: str | None = None
    input: list[str] = Field(default_factory=list)
    output: list[str] = Field(default_factory=list)


class DriftReport(_Open):
    """A drift report: status, verdict and what drifted; ``report`` once it is built."""

    id: str
    status: str
    verdict: str | None = None
    drifted: list[str] | None = None
    report: dict[str, Any] | None = None
    links: dict[str, str] = Field(default_factory=dict)

    @property
    def terminal(self) -> bool:
        return self.status in {"succeeded", "failed", "cancelled"}
