"""Apply redactions to the original text with Presidio's anonymizer.

Findings carry spans on the original (un-normalised) text, so the anonymizer
runs on ``original`` as is: a span that covers zero-width or full-width
characters replaces them with the rest of the match.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from evaluators.findings import Action, Finding
from evaluators.models import shared_model

REDACT_STYLES = ("tag", "mask", "hash")
"""Values of ``detail["redact_with"]``; anything else is treated as tag (fail safe)."""


def _anonymizer() -> Any:
    """Presidio's AnonymizerEngine, from the model registry (built on first use).

    Lazy because importing presidio_anonymizer imports presidio_analyzer and,
    through it, torch: seconds that a process which never redacts should not pay.
    """

    def build() -> Any:
        from presidio_anonymizer import AnonymizerEngine

        return AnonymizerEngine()

    return shared_model("presidio-anonymizer", build)


def _operator(label: str, style: str, longest: int) -> Any:
    from presidio_anonymizer.entities import OperatorConfig

    if style == "mask":
        # chars_to_mask is clamped to the span's length: every character is masked.
        return OperatorConfig("mask", {"masking_char": "*", "chars_to_mask": longest, "from_end": False})
    if style == "hash":
        return OperatorConfig("hash", {"hash_type": "sha256"})
    return OperatorConfig("replace", {"new_value": f"<{label}>"})


def should_redact(finding: Finding) -> bool:
    """Whether ``redact`` applies ``finding``: triggered, action redact, with a span."""
    return finding.triggered and finding.action is Action.REDACT and finding.span is not None


def redact(original: str, findings: Sequence[Finding]) -> str:
    """Return ``original`` with every triggered REDACT finding's span replaced.

    Each finding is replaced the way its ``detail["redact_with"]`` says (tag,
    mask or hash; tag when absent). Overlapping spans are resolved by
    Presidio's REMOVE_INTERSECTIONS strategy: the higher score keeps the
    shared characters and the other is trimmed, so every character of every
    span is still redacted once.
    """
    from presidio_anonymizer.entities import ConflictResolutionStrategy, RecognizerResult

    results = []
    operators: dict[str, Any] = {}
    n = len(original)
    for f in findings:
        if not should_redact(f) or f.span is None:
            continue
        start, end = max(0, f.span.start), min(n, f.span.end)
        if start >= end:
            continue
        style = str(f.detail.get("redact_with", "tag"))
        if style not in REDACT_STYLES:
            style = "tag"
        # Presidio picks operators by entity type; keying on label and style lets
        # two findings with the same label be redacted differently.
        key = f"{f.label}\x1f{style}"
        operators[key] = _operator(f.label, style, n)
        results.append(RecognizerResult(entity_type=key, start=start, end=end, score=f.score))
    if not results:
        return original
    out = _anonymizer().anonymize(
        text=original,
        analyzer_results=results,
        operators=operators,
        conflict_resolution=ConflictResolutionStrategy.REMOVE_INTERSECTIONS,
    )
    return str(out.text)
