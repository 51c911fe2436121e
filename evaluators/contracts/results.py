"""What a generation job produced: stage decisions, findings, usage, fairness."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from evaluators.contracts.base import Contract
from evaluators.contracts.drift import DriftScore
from evaluators.contracts.jobs import SamplingParams
from evaluators.findings import Action, CheckError, Finding


def _is_none(value: object) -> bool:
    return value is None


class SpanRecord(Contract):
    """Character offsets ``[start, end)`` into the original text."""

    start: int
    end: int


class FindingRecord(Contract):
    """A finding as results carry it (see ``evaluators.findings.Finding``)."""

    check: str
    label: str
    score: float
    threshold: float
    triggered: bool
    action: Action
    engine: str
    span: SpanRecord | None = None
    detail: dict[str, Any] | None = Field(default=None, exclude_if=_is_none)

    @classmethod
    def of(cls, finding: Finding) -> FindingRecord:
        span = SpanRecord(start=finding.span.start, end=finding.span.end) if finding.span else None
        return cls(
            check=finding.check,
            label=finding.label,
            score=round(finding.score, 6),
            threshold=finding.threshold,
            triggered=finding.triggered,
            action=finding.action,
            engine=finding.engine,
            span=span,
            detail=dict(finding.detail) or None,
        )


class CheckErrorRecord(Contract):
    """A check that could not run, and what the policy made of it."""

    check: str
    engine: str
    error: str
    action: Action

    @classmethod
    def of(cls, error: CheckError) -> CheckErrorRecord:
        return cls(check=error.check, engine=error.engine, error=error.error, action=error.action)


class StageResult(Contract):
    """What one stage's checks (input or output) decided over the job's texts."""

    action: Action = Field(description="The strongest action of the stage.")
    findings: tuple[FindingRecord, ...] = Field(default=(), description="Triggered findings.")
    scores: dict[str, float] = Field(default_factory=dict, description='"check.label" -> highest score.')
    engines: dict[str, str] = Field(default_factory=dict, description='"check.label" -> engine that scored.')
    errors: tuple[CheckErrorRecord, ...] = Field(default=(), description="Checks that could not run.")


class PolicyIdentity(Contract):
    """Which policy, at which version, decided."""

    name: str
    version: str
    sha256: str


class Usage(Contract):
    """Tokens read and generated."""

    prompt_tokens: int = 0
    completion_tokens: int = 0


class ModelInfo(BaseModel):
    """The model that generated: id, revision and how it ran (device, dtype, ...)."""

    # Open: the generator reports what it knows about itself (device, dtype, int8...).
    model_config = ConfigDict(extra="allow", frozen=True)

    id: str
    revision: str | None = None


class FairnessGap(Contract):
    """One measure's spread across groups."""

    gap: float
    ratio: float
    ci: tuple[float, float]
    highest: str
    lowest: str


class FairnessSummary(Contract):
    """Per-group means and gaps of a fairness job; the policy's gap threshold decides."""

    metric: str = Field(description="The measure the policy gates on.")
    max_gap: float = Field(description="Largest gap the policy allows for that measure.")
    triggered: bool = Field(description="Whether the gap exceeded max_gap.")
    action: Action = Field(description="The policy's action when triggered, else allow.")
    per_group: dict[str, dict[str, float]] = Field(description="measure -> group -> mean.")
    gaps: dict[str, FairnessGap] = Field(description="measure -> spread across groups.")
    n_per_group: dict[str, int] = Field(description="Generations per group.")
    dimension: str = Field(default="", description="The dimension compared, if named.")


class FairnessVariant(Contract):
    """One generated variant of a fairness job."""

    group: str
    action: Action
    output: str | None = None
    scores: dict[str, float]
    findings: tuple[FindingRecord, ...]


class JobResult(Contract):
    """What a generation job produced, as the API returns it and the store keeps it."""

    policy: PolicyIdentity
    params: SamplingParams
    action: Action = Field(description="The job's final action.")
    output: str | None = Field(default=None, description="The filtered output; null when blocked.")
    model: ModelInfo
    usage: Usage = Field(default_factory=Usage)
    timings: dict[str, float] = Field(default_factory=dict, description="Milliseconds per phase.")
    # Left out of the wire form when they do not apply (a blocked job has no output
    # checks, a plain job no fairness block), as clients have always seen it.
    input: StageResult | None = Field(default=None, exclude_if=_is_none, description="Input checks.")
    output_checks: StageResult | None = Field(
        default=None, exclude_if=_is_none, description="Output checks; absent when they did not run."
    )
    findings: tuple[FindingRecord, ...] = Field(default=(), description="Triggered findings, both stages.")
    blocked_stage: Literal["input", "output"] | None = Field(default=None, exclude_if=_is_none)
    finish_reason: str | None = Field(default=None, exclude_if=_is_none)
    batch_rows: int | None = Field(
        default=None, exclude_if=_is_none, description="Rows that shared the decode batch."
    )
    raw_output: str | None = Field(
        default=None, exclude_if=_is_none, description="Unfiltered output, if the policy opts in."
    )
    fairness: FairnessSummary | None = Field(default=None, exclude_if=_is_none)
    variants: tuple[FairnessVariant, ...] | None = Field(default=None, exclude_if=_is_none)
    drift: DriftScore | None = Field(
        default=None,
        exclude_if=_is_none,
        description="How unusual the output (or a blocked prompt) is against the policy's drift baseline.",
    )

    def to_json(self) -> dict[str, Any]:
        """The wire form (JSON types; fields that do not apply left out)."""
        return self.model_dump(mode="json")


class JobError(Contract):
    """Why a job failed or was cancelled (no raw text)."""

    code: str | None = Field(default=None, description="Problem code of a failure, e.g. queue-unavailable.")
    title: str | None = Field(default=None, description="Short summary of a failure.")
    detail: str | None = Field(default=None, description="What went wrong (never the job's text).")
    reason: str | None = Field(default=None, description="Why a job was cancelled.")
