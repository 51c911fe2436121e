"""The runtime built from a policy: runs its checks on batches and decides.

``PolicyEngine.build`` turns a validated ``LoadedPolicy`` into checks with
their models loaded (a missing model is a ``PolicyError`` naming the field);
``evaluate`` runs one stage's checks over a batch and folds the findings
into one ``Decision`` per text.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from evaluators import windows
from evaluators.checks.base import Check, CheckInput
from evaluators.contracts.drift import DriftScore
from evaluators.errors import ModelMissingError, PolicyError, Problem
from evaluators.findings import Action, CheckError, Finding
from evaluators.normalize import NormalizedText, normalize
from evaluators.policy import LoadedPolicy
from evaluators.redact import redact
from evaluators.registry import build_check
from evaluators.telemetry import batch_evaluated, check_timed

log = logging.getLogger(__name__)

Stage = Literal["input", "output"]
STAGES: tuple[Stage, ...] = ("input", "output")


@dataclass
class Decision:
    """What the policy decided about one text."""

    action: Action
    text: str | None
    """The filtered text: redacted where asked, ``None`` when blocked."""
    findings: list[Finding]
    """Every finding, triggered or not."""
    errors: list[CheckError] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    drift: DriftScore | None = None
    """How unusual the text is against the policy's drift baseline (set by the caller that records it)."""

    @property
    def triggered(self) -> list[Finding]:
        return [f for f in self.findings if f.triggered]

    def scores(self) -> dict[str, float]:
        """Highest score per ``check.label`` over engines."""
        out: dict[str, float] = {}
        for f in self.findings:
            key = f"{f.check}.{f.label}"
            out[key] = max(out.get(key, 0.0), round(f.score, 6))
        return out

    def engines(self) -> dict[str, str]:
        """Which engine produced each entry of ``scores()``."""
        best: dict[str, Finding] = {}
        for f in self.findings:
            key = f"{f.check}.{f.label}"
            if key not in best or f.score > best[key].score:
                best[key] = f
        return {k: f.engine for k, f in best.items()}

    def to_dict(self, *, all_findings: bool = False) -> dict[str, Any]:
        """The API shape; ``all_findings`` adds the untriggered ones (supported claims, low scores)."""
        return {
            "action": self.action.value,
            "text": self.text,
            "findings": [f.to_dict() for f in (self.findings if all_findings else self.triggered)],
            "scores": self.scores(),
            "engines": self.engines(),
            "errors": [e.to_dict() for e in self.errors],
            **({"drift": self.drift.model_dump(mode="json")} if self.drift is not None else {}),
        }


@dataclass
class _BoundCheck:
    check: Check
    config: Any
    on_error: Action
    index: int


class PolicyEngine:
    """Runs one policy's checks; safe to share between threads once built."""

    def __init__(self, loaded: LoadedPolicy, stages: dict[Stage, list[_BoundCheck]]) -> None:
        self.loaded = loaded
        self._stages = stages

    @property
    def policy(self) -> Any:
        return self.loaded.policy

    @classmethod
    def build(cls, loaded: LoadedPolicy, *, load_models: bool = True) -> PolicyEngine:
        """Instantiate the policy's checks and, by default, load their models.

        A missing model becomes a ``PolicyError`` that names the policy file,
        the line and the field that asked for it.
        """
        policy = loaded.policy
        stages: dict[Stage, list[_BoundCheck]] = {}
        problems: list[Problem] = []
        for stage in STAGES:
            bound: list[_BoundCheck] = []
            for index, config in enumerate(getattr(policy, stage)):
                if not config.enabled:
                    continue
                check = build_check(config)
                if load_models:
                    try:
                        check.load()
                    except ModelMissingError as exc:
                        sub = str(exc.extra.get("field", "")).split(".") if exc.extra.get("field") else []
                        problems.append(Problem(loaded.locate(stage, index, *sub), exc.detail))
                        continue
                on_error = Action(config.on_error or policy.on_error)
                bound.append(_BoundCheck(check, config, on_error, index))
            stages[stage] = bound
        if problems:
            raise PolicyError(problems)
        return cls(loaded, stages)

    @staticmethod
    def _run_check(bound: _BoundCheck, inputs: list[CheckInput]) -> list[list[Finding] | CheckError]:
        """Run one check on the batch; on failure, isolate the items that cannot run.

        Micro-batching puts unrelated requests in one batch, so one item the
        check cannot evaluate (say, no grounding context) must not fail the
        others: the batch is retried item by item and only the failing items
        get the policy's ``on_error``. A check that cannot run is never "safe".
        """
        try:
            return list(_evaluate_checked(bound, inputs))
        except Exception as exc:
            if len(inputs) == 1:
                log.warning(
                    "check %s could not run: %s (on_error=%s)",
                    bound.check.name,
                    type(exc).__name__,
                    bound.on_error.value,
                )
                return [_error(bound, exc)]
        out: list[list[Finding] | CheckError] = []
        for item in inputs:
            out.extend(PolicyEngine._run_check(bound, [item]))
        return out

    @staticmethod
    def _run_windowed(bound: _BoundCheck, inputs: list[CheckInput]) -> list[list[Finding] | CheckError]:
        """Run one check, giving it texts longer than it reads as overlapping windows (one batch).

        The windows' findings are merged back per text, spans in the whole text's
        offsets; a window that cannot be checked fails its whole text (``on_error``).
        """
        size: int | None = getattr(bound.check, "window_chars", None)
        if size is None or all(len(it.original) <= size for it in inputs):
            return PolicyEngine._run_check(bound, inputs)
        pieces: list[CheckInput] = []
        owners: list[tuple[int, int]] = []
        for i, item in enumerate(inputs):
            for offset, window in windows.split(item.original, size):
                piece = item if offset == 0 and len(window) == len(item.original) else None
                pieces.append(piece or replace(item, normalized=normalize(window)))
                owners.append((i, offset))
        outcomes = PolicyEngine._run_check(bound, pieces)
        parts: list[list[tuple[int, list[Finding]]]] = [[] for _ in inputs]
        failed: dict[int, CheckError] = {}
        for (i, offset), outcome in zip(owners, outcomes, strict=True):
            if isinstance(outcome, CheckError):
                failed.setdefault(i, outcome)
            else:
                parts[i].append((offset, outcome))
        return [failed[i] if i in failed else windows.merge(parts[i]) for i in range(len(inputs))]

    def configs(self, stage: Stage) -> list[Any]:
        """The enabled check configs of ``stage``, in order."""
        return [b.config for b in self._stages[stage]]

    def checks(self, stage: Stage) -> list[str]:
        return [b.check.name for b in self._stages[stage]]

    def evaluate(
        self,
        texts: Sequence[str],
        stage: Stage,
        *,
        contexts: Sequence[Sequence[str]] | None = None,
        extras: Sequence[dict[str, Any]] | None = None,
    ) -> list[Decision]:
        """Run ``stage``'s checks over ``texts`` as one batch and decide each."""
        n = len(texts)
        normalized = [normalize(t) for t in texts]
        inputs = [
            CheckInput(
                normalized=normalized[i],
                stage=stage,
                context=tuple(contexts[i]) if contexts else (),
                extra=dict(extras[i]) if extras else {},
            )
            for i in range(n)
        ]
        findings: list[list[Finding]] = [[] for _ in range(n)]
        errors: list[list[CheckError]] = [[] for _ in range(n)]
        timings: dict[str, float] = {}
        batch_evaluated(self.loaded.name, stage, n)
        for bound in self._stages[stage]:
            started = time.perf_counter()
            per_item = self._run_windowed(bound, inputs)
            for i, outcome in enumerate(per_item):
                if isinstance(outcome, CheckError):
                    errors[i].append(outcome)
                else:
                    findings[i].extend(outcome)
            elapsed = time.perf_counter() - started
            timings[bound.check.name] = round(elapsed * 1000, 3)
            check_timed(self.loaded.name, stage, bound.check.name, elapsed)
        return [_decide(normalized[i], findings[i], errors[i], timings) for i in range(n)]


def _error(bound: _BoundCheck, exc: Exception) -> CheckError:
    return CheckError(
        check=bound.check.name,
        engine=type(bound.check).__name__,
        error=f"{type(exc).__name__}: {exc}",
        action=bound.on_error,
    )


def _evaluate_checked(bound: _BoundCheck, inputs: list[CheckInput]) -> list[list[Finding]]:
    results = bound.check.evaluate(inputs)
    if len(results) != len(inputs):
        raise RuntimeError(
            f"check {bound.check.name} returned {len(results)} results for {len(inputs)} inputs"
        )
    return results


def _decide(
    normalized: NormalizedText,
    findings: list[Finding],
    errors: list[CheckError],
    timings: dict[str, float],
) -> Decision:
    actions = [f.effective_action for f in findings] + [e.action for e in errors]
    action = Action.strongest(actions)
    if action is Action.BLOCK:
        text = None
    elif any(f.triggered and f.action is Action.REDACT and f.span for f in findings):
        text = redact(normalized.original, findings)
    else:
        text = normalized.original
    return Decision(action=action, text=text, findings=findings, errors=errors, timings_ms=dict(timings))
