"""The base of every contract: frozen, and unknown keys are errors."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Contract(BaseModel):
    """Base for the contracts: frozen, unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)
