"""Long texts in windows: every character is checked, spans land on the whole text, nothing is refused."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest

from evaluators import windows
from evaluators.findings import Action, Finding, Span

ROOT = Path(__file__).resolve().parents[2]


def _words(n: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    vocab = ["the", "weather", "report", "said", "tomorrow", "will", "be", "mild", "and", "calm", "again"]
    return " ".join(rng.choice(vocab) for _ in range(n))


@pytest.mark.parametrize("size", [50, 120, 500, 900])
def test_windows_cover_the_text_overlap_and_cut_between_words(size: int) -> None:
    text = _words(600) + "\n" + "x" * (size * 2) + " " + _words(50, seed=1)  # one word longer than a window
    parts = windows.split(text, size)
    assert all(len(w) <= size and text[o : o + len(w)] == w for o, w in parts)
    assert parts[0][0] == 0 and parts[-1][0] + len(parts[-1][1]) == len(text)
    for (o1, w1), (o2, _) in itertools.pairwise(parts):
        assert o1 < o2 <= o1 + len(w1)  # no gap, always forward
    overlap = windows.overlap_for(size)
    # Any stretch of ``overlap`` characters lies whole inside some window: an entity on a border is seen.
    for start in range(0, len(text) - overlap, 7):
        assert any(o <= start and start + overlap <= o + len(w) for o, w in parts), start
    cut_mid_word = sum(1 for o, w in parts[:-1] if text[o + len(w) - 1 : o + len(w) + 1].isalpha())
    assert cut_mid_word <= 2 * len(text) // (size * 2) + 1  # only inside the over-long word


def test_a_short_text_is_one_window() -> None:
    assert windows.split("short", 10) == [(0, "short")]
    with pytest.raises(ValueError, match="overlap"):
        windows.split("x" * 20, 10, overlap=10)


def _f(label: str, score: float, span: tuple[int, int] | None = None, check: str = "pii") -> Finding:
    return Finding(
        check=check,
        label=label,
        score=score,
        threshold=0.5,
        triggered=score >= 0.5,
        action=Action.REDACT if span else Action.BLOCK,
        engine="e",
        span=Span(*span) if span else None,
    )


def test_merge_shifts_spans_counts_a_border_entity_once_and_keeps_the_top_score() -> None:
    merged = windows.merge(
        [
            (0, [_f("EMAIL", 0.9, (90, 100)), _f("threat", 0.1, check="toxicity")]),
            (
                80,
                [
                    _f("EMAIL", 0.95, (10, 20)),
                    _f("PERSON", 0.8, (50, 58)),
                    _f("threat", 0.7, check="toxicity"),
                ],
            ),
        ]
    )
    assert [(f.label, f.span, f.score) for f in merged] == [
        ("EMAIL", Span(90, 100), 0.95),
        ("threat", None, 0.7),
        ("PERSON", Span(130, 138), 0.8),
    ]
    assert next(f for f in merged if f.label == "threat").triggered


@pytest.fixture(scope="module")
def default_engine() -> object:
    from evaluators.engine import PolicyEngine
    from evaluators.policy import load_policy_file

    return PolicyEngine.build(load_policy_file(ROOT / "policies" / "default.yaml"))


def test_the_end_of_a_long_text_is_checked_and_redacted_in_place(default_engine: object) -> None:
    """Past what the models read (~1,000 characters), a threat still blocks and an address is redacted."""
    from evaluators.engine import PolicyEngine

    engine: PolicyEngine = default_engine  # type: ignore[assignment]
    filler = _words(700)  # about 4,000 characters of harmless text
    email = "jane.doe@example.com"
    text = f"{filler} Write to {email} about it. {filler}"
    (decision,) = engine.evaluate([text], "input")
    assert decision.action is Action.REDACT and decision.text is not None
    assert email not in decision.text and decision.text.startswith(filler) and decision.text.endswith(filler)
    found = next(f for f in decision.triggered if f.label == "EMAIL_ADDRESS")
    assert found.span is not None and text[found.span.start : found.span.end] == email
    assert len([f for f in decision.triggered if f.label == "EMAIL_ADDRESS"]) == 1

    threat = f"{filler} I will kill you and your whole family tonight."
    (decision,) = engine.evaluate([threat], "input")
    assert decision.action is Action.BLOCK, decision.scores()
    assert decision.scores()["toxicity.threat"] >= 0.5
    (decision,) = engine.evaluate([filler], "input")
    assert decision.action is Action.ALLOW and decision.scores()["toxicity.threat"] < 0.5
