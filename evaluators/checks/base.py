"""The contract every check implements, in the spirit of Presidio's EntityRecognizer."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

from evaluators.findings import Finding
from evaluators.normalize import NormalizedText


@dataclass(frozen=True)
class CheckInput:
    """One text as a check sees it.

    ``text`` is the normalised form checks score; spans they report are mapped
    back to ``original`` through ``normalized.to_original``.
    """

    normalized: NormalizedText
    stage: str = "output"
    context: tuple[str, ...] = ()
    """Grounding documents for hallucination checks (empty when none were sent)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Per-item material some checks need (e.g. extra samples for self-consistency)."""

    @property
    def text(self) -> str:
        return self.normalized.text

    @property
    def original(self) -> str:
        return self.normalized.original


@runtime_checkable
class Check(Protocol):
    """A check scores a batch of texts and returns one list of findings per text."""

    name: str
    """The check's registered name (``pii``, ``toxicity``...)."""

    def load(self) -> None:
        """Load models; idempotent. Raises ``ModelMissingError`` with what is missing."""

    def evaluate(self, batch: Sequence[CheckInput]) -> list[list[Finding]]:
        """Score ``batch``; the result has exactly one list per input, in order.

        Raises ``CheckFailed`` (or any exception) when the check cannot run:
        the engine turns that into the policy's ``on_error`` action.
        """
        ...


class CheckBase:
    """Shared plumbing for concrete checks: the config and a load-once guard."""

    name: ClassVar[str]
    window_chars: ClassVar[int | None] = None
    """Longest text the check's model reads whole; the engine hands longer ones over in
    overlapping windows (``evaluators/windows.py``). None: whole texts, whatever their length."""

    def __init__(self, config: Any) -> None:
        self.config = config
        self._loaded = False

    def load(self) -> None:
        if not self._loaded:
            self._load()
            self._loaded = True

    def _load(self) -> None:  # pragma: no cover - overridden when a check has models
        return None

    def _ensure_loaded(self) -> None:
        if not self._loaded:
            self.load()
