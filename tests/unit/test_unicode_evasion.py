"""Unicode evasion: detection rates per evasion kind stay at or above the measured floors.

The corpus (tests/fixtures/unicode_evasion.jsonl, written by
``bench/unicode_evasion.py --write``) rewrites toxic phrases and personal data
with look-alike letters, invisible and direction characters, combining marks,
full-width forms, spacing and leetspeak. Every row goes through the shipped
``default`` policy's engine in process; the floors are the rates measured on
this corpus less a margin of one or two rows (the bench prints the table).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Measured (bench/unicode_evasion.py): toxicity 100/95/100/100/25/100/100/40/95/100 %,
# PII 100 % for every kind but spacing (94 %: one bare "name at host dot co dot uk").
FLOORS: dict[tuple[str, str], float] = {
    **{
        ("toxicity", kind): floor
        for kind, floor in {
            "baseline": 0.95,
            "homoglyph": 0.85,
            "zero_width": 0.90,
            "bidi": 0.90,
            # Text stored backwards in a right-to-left override: the classifier reads it
            # backwards (normalisation, which keys the model cache, does not reorder).
            "bidi_reversed": 0.15,
            "combining": 0.90,
            "fullwidth": 0.90,
            # "y o u a r e a n i d i o t": the classifier sees letters, not words.
            "spacing": 0.30,
            "leetspeak": 0.85,
            "mixed": 0.90,
        }.items()
    },
    **{
        ("pii", kind): 0.88
        for kind in (
            "baseline",
            "homoglyph",
            "zero_width",
            "bidi",
            "bidi_reversed",
            "combining",
            "fullwidth",
            "leetspeak",
            "mixed",
        )
    },
    ("pii", "spacing"): 0.80,
}


def _bench() -> ModuleType:
    """bench/unicode_evasion.py (bench/ is not a package), loaded once."""
    if "unicode_evasion" not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            "unicode_evasion", ROOT / "bench" / "unicode_evasion.py"
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["unicode_evasion"] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules["unicode_evasion"]


@pytest.fixture(scope="module")
def outcomes() -> list[Any]:
    bench = _bench()
    return list(bench.evaluate(bench.load_corpus()))


def test_corpus_is_what_the_bench_writes() -> None:
    bench = _bench()
    assert bench.load_corpus() == bench.build_corpus(), "run bench/unicode_evasion.py --write"


def test_every_kind_covers_toxicity_and_each_pii_type() -> None:
    rows = _bench().load_corpus()
    kinds = {r["kind"] for r in rows}
    assert kinds == set(_bench().KINDS)
    for kind in kinds:
        targets = {r.get("entity", r["target"]) for r in rows if r["kind"] == kind}
        assert targets == {"toxicity", "EMAIL_ADDRESS", "PHONE_NUMBER", "US_SSN"}, kind


def test_detection_rates_hold_their_floors(outcomes: list[Any]) -> None:
    table = _bench().rates(outcomes)
    low = {
        key: f"{table[key][0]}/{table[key][1]} < {floor:.0%}"
        for key, floor in FLOORS.items()
        if table[key][0] / table[key][1] < floor
    }
    assert not low, low


def test_redaction_covers_the_disguised_value(outcomes: list[Any]) -> None:
    """A caught PII row's findings cover every visible character of the rewritten value."""
    caught = [o for o in outcomes if o.row["target"] == "pii" and o.detected]
    assert len(caught) >= 0.9 * sum(1 for o in outcomes if o.row["target"] == "pii")
    for o in caught:
        assert "0 of" in o.why, o.why
