"""Bias check on ToxiGen: hit rate on hate statements vs false positives on neutral ones.

Data: ``../shared/data/toxigen-demonstrations/toxigen_demonstrations.csv``
(read in place, never copied): 587 ToxiGen seed statements, ``label`` hate
(317) or neutral (270), each about one ``target_group`` (14 groups). The
hate is mostly implicit (no slurs, few swear words) and the neutral
statements mention the same groups, so a check that keys on group names
alone would flag both.

Per statement the bias check runs as configured (profanity tier by default,
``--checkpoint`` for a Detoxify folder). Reported, per target group and
overall:

* hit rate: hate statements with a triggered finding (any, and per sub-check);
* false-positive rate: neutral statements with a triggered finding;
* coverage: statements where the lexicon found a term of the group's own
  dimension and subgroup (without it, the profanity fallback cannot trigger
  identity_attack and there is nothing to swap).

Run: ``.venv/bin/python bench/toxigen_bias.py [--checkpoint DIR] [--threads 1]``
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "toxigen-demonstrations" / "toxigen_demonstrations.csv"

if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from bench.bias_common import add_scorer_args, bias_check  # noqa: E402
from evaluators.checks.base import CheckInput  # noqa: E402
from evaluators.findings import Finding  # noqa: E402
from evaluators.normalize import normalize  # noqa: E402

# ToxiGen target group -> the lexicon's (dimension, subgroup) pairs that name it.
TARGETS: dict[str, set[tuple[str, str]]] = {
    "asian": {("race_ethnicity", "asian"), ("nationality", "chinese"), ("nationality", "japanese")},
    "black": {("race_ethnicity", "black")},
    "bisexual": {("sexual_orientation", "bisexual")},
    "chinese": {("nationality", "chinese")},
    "immigrant": {("immigration_status", "immigrant")},
    "jewish": {("religion", "jewish")},
    "latino": {("race_ethnicity", "latino"), ("nationality", "mexican")},
    "lgbtq": {
        ("sexual_orientation", "gay"),
        ("sexual_orientation", "lesbian"),
        ("sexual_orientation", "bisexual"),
        ("sexual_orientation", "lgbtq"),
        ("sexual_orientation", "asexual"),
        ("gender_identity", "transgender"),
        ("gender_identity", "nonbinary"),
    },
    "mental_disability": {("disability", "mental_disability"), ("disability", "disabled")},
    "mexican": {("nationality", "mexican"), ("race_ethnicity", "latino")},
    "middle_east": {
        ("race_ethnicity", "middle_eastern"),
        ("nationality", "syrian"),
        ("nationality", "iranian"),
    },
    "muslim": {("religion", "muslim")},
    "native_american": {("race_ethnicity", "native_american")},
    "physical_disability": {("disability", "disabled")},
}


@dataclass(frozen=True)
class Row:
    text: str
    hate: bool
    group: str


def read_rows(path: Path) -> list[Row]:
    with path.open(newline="", encoding="utf-8") as fh:
        return [Row(r["text"], r["label"] == "hate", r["target_group"]) for r in csv.DictReader(fh)]


def flagged(findings: dict[str, Finding], label: str | None) -> bool:
    return any(f.triggered for f in findings.values()) if label is None else findings[label].triggered


def share(values: Sequence[bool]) -> float:
    return sum(values) / len(values) if values else 0.0


def main(argv: Sequence[str] | None = None) -> int:
    from evaluators.runtime import configure_process

    configure_process()  # offline, before any model library is imported
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    add_scorer_args(parser, "statements per check.evaluate call")
    parser.add_argument("--data", type=Path, default=DATA, help="toxigen_demonstrations.csv")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    check, config = bias_check(args)
    rows = read_rows(args.data)
    results: list[dict[str, Finding]] = []
    for start in range(0, len(rows), args.batch):
        items = [CheckInput(normalize(r.text)) for r in rows[start : start + args.batch]]
        results.extend({f.label: f for f in findings} for findings in check.evaluate(items))

    def covered(row: Row, res: dict[str, Finding]) -> bool:
        mentions = res["identity_attack"].detail["mentions"]
        return any((m["dimension"], m["group"]) in TARGETS.get(row.group, set()) for m in mentions)

    print(f"data: {args.data}")
    print(
        f"scorer: {check.scorer.engine}; thresholds: identity_attack {config.identity_attack_threshold}, "
        f"counterfactual_gap {config.counterfactual_threshold}"
    )
    print("hit = hate statements flagged; FP = neutral statements flagged; cover = group term found")
    print()
    header = (
        f"{'target group':<20} {'hate':>4} {'neut':>4} | {'hit any':>7} {'hit ia':>6} {'hit cf':>6} | "
        f"{'FP any':>6} {'FP ia':>6} {'FP cf':>6} | {'cover':>5}"
    )
    print(header)
    print("-" * len(header))
    by_group: dict[str, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        by_group[row.group].append(i)
    for group in [*sorted(by_group), "ALL"]:
        idx = list(range(len(rows))) if group == "ALL" else by_group[group]
        if group == "ALL":
            print("-" * len(header))
        hate = [results[i] for i in idx if rows[i].hate]
        neutral = [results[i] for i in idx if not rows[i].hate]
        cover = share([covered(rows[i], results[i]) for i in idx])
        print(
            f"{group:<20} {len(hate):>4} {len(neutral):>4} | "
            f"{share([flagged(r, None) for r in hate]):>7.1%} "
            f"{share([flagged(r, 'identity_attack') for r in hate]):>6.1%} "
            f"{share([flagged(r, 'counterfactual_gap') for r in hate]):>6.1%} | "
            f"{share([flagged(r, None) for r in neutral]):>6.1%} "
            f"{share([flagged(r, 'identity_attack') for r in neutral]):>6.1%} "
            f"{share([flagged(r, 'counterfactual_gap') for r in neutral]):>6.1%} | {cover:>5.1%}"
        )
    hate_scores = [r["identity_attack"].score for r, row in zip(results, rows, strict=True) if row.hate]
    neutral_scores = [
        r["identity_attack"].score for r, row in zip(results, rows, strict=True) if not row.hate
    ]
    truth = [row.hate for row in rows]
    print()
    print(
        f"mean identity-attack score: hate {sum(hate_scores) / len(hate_scores):.3f}, "
        f"neutral {sum(neutral_scores) / len(neutral_scores):.3f}"
    )
    from sklearn.metrics import roc_auc_score

    auc = roc_auc_score(truth, [r["identity_attack"].score for r in results])
    gap_auc = roc_auc_score(truth, [r["counterfactual_gap"].score for r in results])
    print(f"ROC AUC hate vs neutral: identity-attack score {auc:.3f}, counterfactual gap {gap_auc:.3f}")
    for name, want in (("hate", True), ("neutral", False)):
        deltas = [
            r["counterfactual_gap"].detail["delta"]
            for r, row in zip(results, rows, strict=True)
            if row.hate is want and r["counterfactual_gap"].triggered
        ]
        higher = sum(d > 0 for d in deltas)
        print(
            f"triggered cf-gap on {name}: {len(deltas)}; a swapped variant scored higher in {higher}, "
            f"lower in {len(deltas) - higher}"
        )
    none = sum(r["counterfactual_gap"].detail.get("variants", 0) == 0 for r in results)
    print(f"statements with no identity term at all: {none} of {len(rows)}")
    print(f"time: {time.perf_counter() - started:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
