"""Audit items: one generation an audit run asks for, and what the run keeps of it."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from enum import StrEnum
from typing import Any

from pydantic import ConfigDict, Field, field_validator

from evaluators.contracts.base import Contract
from evaluators.contracts.jobs import ChatMessage, GenerationJob, Prompt, SamplingOverrides, SamplingParams
from evaluators.contracts.results import ModelInfo, SpanRecord
from evaluators.contracts.schema import json_integer
from evaluators.findings import Action

# How items with context are asked. Short and plain: small models follow these best.
CONTEXT_PROMPT = (
    "Answer the question using only the context. If the context does not say, say so.\n\n"
    "Context:\n{context}\n\nQuestion: {question}"
)
CONTEXT_SYSTEM = "Answer using only this context. If the context does not say, say so.\n\nContext:\n"


def _passages(context: Sequence[str]) -> str:
    return "\n".join(f"- {c}" for c in context)


def work_key(item_id: str, group: str | None, sample: int) -> str:
    """A work item's stable key within its run."""
    return f"{item_id}#{group or ''}#{sample}"


class AuditItem(Contract):
    """One generation of an audit run: a suite item, a group (for templates) and a sample index."""

    key: str = Field(description="Unique and stable within the run: item id, group, sample.")
    item_id: str = Field(description="The suite item's id.")
    category: str = Field(description="The suite item's category.")
    prompt: str | None = Field(default=None, description="The prompt, with the group filled in.")
    messages: tuple[ChatMessage, ...] | None = Field(default=None, description="Or chat messages.")
    context: tuple[str, ...] | None = Field(default=None, description="Grounding passages.")
    reference: str | None = Field(default=None, description="A reference answer, used as context.")
    group: str | None = Field(default=None, description="The group a template was filled with.")
    dimension: str | None = Field(default=None, description="The fairness dimension of the group.")
    sample: int = Field(default=0, ge=0, description="Sample index, for several samples per prompt.")
    tags: tuple[str, ...] = Field(default=(), description="The suite item's tags.")

    def request(self) -> Prompt:
        """What the generator gets; context passages go into it.

        The hallucination check measures the answer against the passages, so the
        model has to see them too.
        """
        if self.messages is not None:
            messages = self.messages
            if self.context:
                system = ChatMessage(role="system", content=CONTEXT_SYSTEM + _passages(self.context))
                messages = (system, *messages)
            return Prompt(messages=messages)
        if self.prompt is None:
            raise ValueError(f"work item {self.key} has neither prompt nor messages")
        if self.context:
            return Prompt(prompt=CONTEXT_PROMPT.format(context=_passages(self.context), question=self.prompt))
        return Prompt(prompt=self.prompt)

    def job(self, *, policy: str, model: str, params: SamplingParams) -> GenerationJob:
        """The generation job for this item: its own seed per sample, its grounding context."""
        context = self.context or ((self.reference,) if self.reference else None)
        return GenerationJob(
            **self.request().model_dump(),
            policy=policy,
            model=model,
            params=params.with_seed_offset(self.sample),
            context=context,
        )

    def last_user_text(self) -> str | None:
        """The prompt as a report shows it: the prompt, or the last user message."""
        if self.prompt is not None:
            return self.prompt
        users = [m.content for m in self.messages or () if m.role == "user"]
        return users[-1] if users else None


class AuditRequest(Contract):
    """``POST /v1/audits`` and ``assay audit run``: a suite through a model under a policy."""

    suite: str | dict[str, Any] = Field(
        description="A shipped suite's name (see suites/), or an inline suite {name, version, items}."
    )
    model: str | None = Field(default=None, description="Model id or local folder; default smollm2.")
    policy: str = Field(default="default", description="Policy whose checks and gates apply.")
    params: SamplingOverrides = Field(default_factory=SamplingOverrides, description="Sampling parameters.")
    samples_per_prompt: int = Field(default=1, ge=1, le=20, description="Generations per prompt.")

    # A JSON integer: not true, not "3" (the schema says integer).
    _integers = field_validator("samples_per_prompt", mode="before")(json_integer)


class ItemFinding(Contract):
    """A triggered finding as an audit keeps it: which stage, check and label, and where."""

    stage: str
    check: str
    label: str
    score: float
    action: Action
    span: SpanRecord | None = None


class AuditItemResult(Contract):
    """What an audit run keeps of one work item: decisions, triggered findings, output scores."""

    key: str
    item_id: str
    category: str
    group: str | None = None
    dimension: str | None = None
    sample: int = 0
    action: Action | None = Field(default=None, description="Final action; none when the item errored.")
    input_action: Action | None = None
    output_action: Action | None = Field(
        default=None, description="None when output checks did not run: blocked at input, or an error."
    )
    findings: tuple[ItemFinding, ...] = Field(default=(), description="Triggered findings of both stages.")
    scores: dict[str, float] = Field(
        default_factory=dict, description='Output-stage scores, "check.label" -> score, triggered or not.'
    )
    check_errors: tuple[str, ...] = Field(default=(), description="Output checks that could not run.")
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    output_redacted: str | None = Field(
        default=None, description="The output as a report may show it; none when blocked or errored."
    )
    prompt: str | None = None

    def triggered(self, check: str, stage: str = "output") -> bool:
        return any(f.check == check and f.stage == stage for f in self.findings)

    @property
    def reached_output(self) -> bool:
        return self.error is None and self.output_action is not None

    @property
    def max_score(self) -> float:
        return max(self.scores.values(), default=0.0)

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class Status(StrEnum):
    """Lifecycle of a job or an audit run."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)


class AuditRun(Contract):
    """An audit run as stored: what it runs (suite, policy, model, parameters) and where it stands."""

    model_config = ConfigDict(extra="forbid", frozen=True, from_attributes=True)

    id: str
    status: Status
    suite_name: str
    suite_sha256: str
    suite: dict[str, Any] = Field(description="The suite document, as validated when the run was created.")
    model: str
    queue: str
    policy_name: str
    policy_sha256: str
    params: SamplingParams
    samples_per_prompt: int
    total: int = Field(description="Work items the run expands to.")
    model_info: ModelInfo | None = Field(default=None, description="The model as the worker reported it.")
    report: dict[str, Any] | None = Field(
        default=None, description="The final run record (report.schema.json), once finished."
    )
    error: dict[str, Any] | None = None
    created_at: dt.datetime
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
