"""Drift: the event every guarded text leaves behind, the per-result score, and reports.

A ``DriftEvent`` is what recording keeps of one moderation call, generation
stage or audit item: scores, entity counts, lengths and a reduced sentence
embedding of the filtered text; never the text itself. The store folds events
into per-hour sketches as they arrive; a ``DriftReport`` compares two sets of
sketches (a baseline and a window) signal by signal. ``DriftScore`` is the
``drift`` field of every moderation and generation result.
"""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from evaluators.contracts.base import Contract
from evaluators.contracts.schema import schema_extra
from evaluators.findings import Action

Stage = Literal["input", "output"]
Source = Literal["moderation", "generation", "audit"]


def _utc(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


class DriftEvent(Contract):
    """One guarded text as drift statistics see it (no raw text, ever)."""

    at: dt.datetime = Field(description="When the text was checked (UTC).")
    policy: str = Field(min_length=1, description="Policy name.")
    policy_sha256: str = Field(description="sha256 of the policy file that decided.")
    model: str = Field(default="", description="Model that generated the text; empty for moderation calls.")
    stage: Stage = Field(description="input (prompts) or output (model answers).")
    source: Source = Field(description="moderation call, generation job or audit item.")
    run_id: str = Field(default="", description="The audit run of an audit item; empty otherwise.")
    action: Action = Field(description="The policy's decision on the text.")
    scores: dict[str, float] = Field(default_factory=dict, description='"check.label" -> score in [0, 1].')
    entities: dict[str, int] = Field(
        default_factory=dict, description="PII entity type -> triggered findings of that type."
    )
    length: int = Field(ge=0, description="Characters of the checked text.")
    embedding: tuple[float, ...] | None = Field(
        default=None,
        description="Reduced unit-norm MiniLM embedding of the filtered text; none when blocked.",
    )

    @field_validator("at")
    @classmethod
    def _aware(cls, value: dt.datetime) -> dt.datetime:
        return _utc(value)


class DriftStatus(StrEnum):
    """Whether a result's drift could be scored, and if not, why."""

    SCORED = "scored"
    NO_BASELINE = "no_baseline"
    DISABLED = "disabled"
    UNAVAILABLE = "unavailable"


class DriftScore(Contract):
    """How unusual one result is against its policy's current baseline.

    Percentiles are of the baseline: 99 means the item is further out than 99% of
    the baseline's own items. Without a baseline every number is null and
    ``status`` says why; it is never 0 by default.
    """

    status: DriftStatus = Field(description="scored, no_baseline, disabled or unavailable.")
    detail: str | None = Field(default=None, description="Why the item was not scored, when it was not.")
    stage: Stage = Field(description="The stage whose text was scored.")
    baseline: str | None = Field(default=None, description="Name of the baseline compared against.")
    novelty: float | None = Field(
        default=None,
        description="Percentile (0-100) of the embedding's distance to its nearest baseline neighbours "
        "among the baseline items' own distances; null when there is no filtered text (blocked) "
        "or the policy embeds after the reply (drift.embed_inline off, the default).",
    )
    distance: float | None = Field(
        default=None, description="Mean cosine distance to the nearest baseline neighbours."
    )
    scores: dict[str, float] = Field(
        default_factory=dict, description='"check.label" -> percentile (0-100) of the score in the baseline.'
    )
    unusual: bool | None = Field(
        default=None, description="Whether novelty reaches the policy's drift.novelty_percentile."
    )


FROM_EXAMPLE, TO_EXAMPLE = "2026-01-01T00:00:00Z", "2026-01-08T00:00:00Z"


class TimeRange(Contract):
    """A half-open time range [from, to); reports round it out to whole hours."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_by_name=True, validate_by_alias=True)

    # Examples in order: schema-driven clients and tests take them, and 'to' must follow 'from'.
    start: dt.datetime = Field(
        alias="from", examples=[FROM_EXAMPLE], description="Start (inclusive), ISO 8601; UTC when naive."
    )
    end: dt.datetime = Field(
        alias="to", examples=[TO_EXAMPLE], description="End (exclusive), ISO 8601; UTC when naive."
    )

    @field_validator("start", "end")
    @classmethod
    def _aware(cls, value: dt.datetime) -> dt.datetime:
        return _utc(value)

    @model_validator(mode="after")
    def _ordered(self) -> TimeRange:
        if self.end <= self.start:
            raise ValueError("'to' must be after 'from'")
        return self

    @classmethod
    def of(cls, start: dt.datetime, end: dt.datetime) -> TimeRange:
        return cls.model_validate({"from": start, "to": end})

    def wire(self) -> dict[str, str]:
        return {"from": self.start.isoformat(), "to": self.end.isoformat()}


def one_of_kinds(kinds: dict[str, tuple[str, ...]], types: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """JSON Schema for "exactly one kind": each kind's fields set, every other field null or absent."""
    fields = [f for names in kinds.values() for f in names]
    return {
        "oneOf": [
            {
                "required": list(names),
                "properties": {f: types[f] if f in names else {"type": "null"} for f in fields},
            }
            for names in kinds.values()
        ]
    }


_WHEN = {"type": "string", "format": "date-time"}
_ID = {"type": "string"}


class BaselineSpec(Contract):
    """What a report compares against: a time window, an audit run, or a named baseline."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        validate_by_name=True,
        validate_by_alias=True,
        json_schema_extra=schema_extra(
            one_of_kinds(
                {"window": ("from", "to"), "audit": ("audit",), "name": ("name",)},
                {"from": _WHEN, "to": _WHEN, "audit": _ID, "name": _ID},
            )
        ),
    )

    start: dt.datetime | None = Field(
        default=None, alias="from", examples=[FROM_EXAMPLE], description="Window start."
    )
    end: dt.datetime | None = Field(
        default=None, alias="to", examples=[TO_EXAMPLE], description="Window end."
    )
    audit: str | None = Field(default=None, description="An audit run id: its items are the baseline.")
    name: str | None = Field(default=None, description="A stored baseline's name.")

    @model_validator(mode="after")
    def _one_kind(self) -> BaselineSpec:
        kinds = [
            self.start is not None or self.end is not None,
            self.audit is not None,
            self.name is not None,
        ]
        if sum(kinds) != 1:
            raise ValueError("give exactly one of {from, to}, {audit} or {name}")
        if kinds[0]:
            if self.start is None or self.end is None:
                raise ValueError("a window baseline needs both 'from' and 'to'")
            TimeRange.of(self.start, self.end)
        return self

    def window(self) -> TimeRange | None:
        if self.start is None or self.end is None:
            return None
        return TimeRange.of(self.start, self.end)


class DriftReportRequest(Contract):
    """``POST /v1/drift/reports`` and ``assay drift report``."""

    policy: str = Field(description="Policy whose traffic is compared.")
    model: str | None = Field(default=None, description="Only this model's events; default all.")
    baseline: BaselineSpec | None = Field(
        default=None,
        description="{from, to}, {audit: id} or {name}; default the policy's current baseline.",
    )
    window: TimeRange = Field(description="The window compared against the baseline.")


BASELINE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class Baseline(Contract):
    """A named baseline: a time window of live events or an audit run, per policy and model."""

    name: str = Field(pattern=BASELINE_NAME, description="Unique per policy.")
    policy: str = Field(description="Policy name.")
    model: str | None = Field(default=None, description="Model; null for any (moderation traffic).")
    start: dt.datetime | None = Field(default=None, description="Window start, for a window baseline.")
    end: dt.datetime | None = Field(default=None, description="Window end, for a window baseline.")
    audit: str | None = Field(default=None, description="Audit run id, for an audit baseline.")
    created_at: dt.datetime | None = Field(default=None, description="When it was created.")

    @model_validator(mode="after")
    def _one_kind(self) -> Baseline:
        if (self.audit is None) == (self.start is None or self.end is None):
            raise ValueError("a baseline is either a window (from, to) or an audit run")
        return self

    def spec(self) -> BaselineSpec:
        if self.audit is not None:
            return BaselineSpec(audit=self.audit)
        return BaselineSpec.model_validate({"from": self.start, "to": self.end})

    def wire(self) -> dict[str, Any]:
        body: dict[str, Any] = {"name": self.name, "policy": self.policy, "model": self.model}
        if self.audit is not None:
            body["audit"] = self.audit
        else:
            body["from"] = self.start.isoformat() if self.start else None
            body["to"] = self.end.isoformat() if self.end else None
        body["created_at"] = self.created_at.isoformat() if self.created_at else None
        return body


Verdict = Literal["drift", "ok", "insufficient_data"]


class Statistic(Contract):
    """One statistic of one signal against its policy threshold."""

    name: str = Field(description="psi, ks, js, chi2, mmd.")
    value: float | None = Field(description="The statistic; null when there was too little data.")
    threshold: float = Field(description="The policy threshold on the statistic.")
    p_value: float | None = Field(default=None, description="p-value of the test, where there is one.")
    verdict: Verdict = Field(description="drift when over the threshold (and p below alpha, if tested).")


class SignalResult(Contract):
    """One signal (a score, the action or entity mix, lengths, the embeddings) of one stage."""

    name: str = Field(description='e.g. "output.scores.toxicity.hate", "input.actions", "output.embedding".')
    stage: Stage
    kind: Literal["score", "length", "mix", "embedding"]
    verdict: Verdict = Field(description="drift when any statistic drifts.")
    n_baseline: int = Field(ge=0, description="Baseline sample size of this signal.")
    n_window: int = Field(ge=0, description="Window sample size of this signal.")
    statistics: tuple[Statistic, ...]
    detail: str | None = Field(default=None, description="A note, e.g. entity types new in the window.")
    chart: dict[str, Any] = Field(default_factory=dict, description="What the HTML page charts.")


class DriftReport(Contract):
    """A finished drift report: verdict first, then every signal."""

    id: str
    policy: str
    model: str | None = None
    trigger: Literal["api", "schedule", "cli"] = "api"
    baseline: dict[str, Any] = Field(description="What was compared against, and its event counts.")
    window: dict[str, Any] = Field(description="The window compared, and its event counts.")
    verdict: Verdict = Field(description="drift when any signal drifts; insufficient_data when none could.")
    drifted: tuple[str, ...] = Field(default=(), description="Names of the drifting signals.")
    signals: tuple[SignalResult, ...] = ()
    thresholds: dict[str, float] = Field(default_factory=dict, description="The policy thresholds used.")
    warnings: tuple[str, ...] = ()
    created_at: dt.datetime
    elapsed_ms: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class DriftReportRecord(Contract):
    """A report as stored: its request, status and (when finished) the report."""

    id: str
    status: Literal["queued", "running", "succeeded", "failed"]
    policy: str
    model: str | None = None
    trigger: Literal["api", "schedule", "cli"] = "api"
    request: DriftReportRequest
    report: DriftReport | None = None
    error: str | None = None
    alert: dict[str, Any] | None = None
    created_at: dt.datetime
    finished_at: dt.datetime | None = None
