"""Typed results of checks: findings, actions and spans."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any


class Action(enum.StrEnum):
    """What happens to a text; ordered by severity (allow < flag < redact < block)."""

    ALLOW = "allow"
    FLAG = "flag"
    REDACT = "redact"
    BLOCK = "block"

    @property
    def severity(self) -> int:
        return _SEVERITY[self]

    @classmethod
    def strongest(cls, actions: list[Action]) -> Action:
        return max(actions, key=lambda a: a.severity, default=cls.ALLOW)


_SEVERITY = {Action.ALLOW: 0, Action.FLAG: 1, Action.REDACT: 2, Action.BLOCK: 3}


@dataclass(frozen=True)
class Span:
    """Character offsets ``[start, end)`` into the original (un-normalised) text."""

    start: int
    end: int


@dataclass(frozen=True)
class Finding:
    """One scored label from one check on one text.

    A check reports every label it scored; ``triggered`` says whether the score
    crossed the threshold, and ``action`` is what the policy then asks for.
    """

    check: str
    label: str
    score: float
    threshold: float
    triggered: bool
    action: Action
    engine: str
    span: Span | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def effective_action(self) -> Action:
        return self.action if self.triggered else Action.ALLOW

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["action"] = self.action.value
        out["score"] = round(self.score, 6)
        if not self.detail:
            out.pop("detail")
        return out


@dataclass(frozen=True)
class CheckError:
    """A check that could not run on a text, and what the policy made of it."""

    check: str
    engine: str
    error: str
    action: Action

    def to_dict(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "engine": self.engine,
            "error": self.error,
            "action": self.action.value,
        }
