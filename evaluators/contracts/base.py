"""The base of every contract: frozen, and unknown keys are errors."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

DEFAULT_TENANT = "default"
"""The tenant that owns what is created with auth off, by the CLI and by the schedule."""


class Contract(BaseModel):
    """Base for the contracts: frozen, unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)
