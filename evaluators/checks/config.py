"""Validated, frozen configuration models shared by every check.

A policy file is data; these models are its schema. Each check module
defines its own ``Config`` subclass with ``check: Literal[...]`` as tag.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from evaluators.findings import Action

OnError = Literal["block", "flag", "allow"]


class Strict(BaseModel):
    """Base for policy models: unknown keys are errors and values are frozen."""

    # No infinities or NaN: "1e999" or "inf" in a file would slip past unbounded float fields.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class LabelRule(Strict):
    """Threshold and action for one label a check scores."""

    threshold: float = Field(
        ge=0.0, le=1.0, description="Score at or above which the label triggers (0 to 1)."
    )
    action: Action = Field(
        default=Action.FLAG,
        description="What a triggered label does: allow, flag, redact or block.",
    )


class CheckConfigBase(Strict):
    """Fields every check accepts."""

    enabled: bool = Field(default=True, description="Set false to keep the entry but skip the check.")
    on_error: OnError | None = Field(
        default=None,
        description=(
            "What happens when the check cannot run: block (fail closed), flag, or allow "
            "(fail open). Defaults to the policy's on_error, which defaults to block."
        ),
    )
    description: str | None = Field(default=None, description="Free text for people reading the policy.")
