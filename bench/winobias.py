"""Bias check on WinoBias: does it flag pro- and anti-stereotyped sentences at different rates?

Data: ``../shared/data/winobias/{pro,anti}_stereotyped_type{1,2}.txt.{dev,test}``
(read in place, never copied): 8 files of 396 sentences. Line i of a pro
file and line i of its anti file are the same sentence with the pronoun's
gender flipped, so that the occupation matches (pro) or breaks (anti) the
US labour statistics stereotype. Brackets marking the coreference are removed.

None of these sentences is abusive, so a fair check flags neither set and
flags both at the same rate; the figure of interest is the gap between the
two flag rates (pro - anti), per sub-check (identity_attack,
counterfactual_gap) and for any finding. The counterfactual of a pro
sentence swaps its pronoun, which mostly gives the paired anti sentence, so
the mean absolute score change within pairs is also shown: what the scorer
itself does when only the gender changes.

The scorer is whatever the bias check's ``toxicity`` config gives: the
alt-profanity-check tier by default, or ``--checkpoint`` for a Detoxify
folder from ``assay models train-toxicity`` (its identity_attack label).

Run: ``.venv/bin/python bench/winobias.py [--checkpoint DIR] [--threads 1]``
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "winobias"

if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from bench.bias_common import add_scorer_args, bias_check  # noqa: E402
from evaluators.checks.base import CheckInput  # noqa: E402
from evaluators.checks.bias import BiasCheck  # noqa: E402
from evaluators.findings import Finding  # noqa: E402
from evaluators.normalize import normalize  # noqa: E402

_NUMBER = re.compile(r"^\d+\s+")


def clean(line: str) -> str:
    """Drop the line number and the coreference brackets."""
    return _NUMBER.sub("", line.strip()).replace("[", "").replace("]", "")


def read_set(folder: Path, stereotype: str, kind: int) -> list[str]:
    out: list[str] = []
    for split in ("dev", "test"):
        path = folder / f"{stereotype}_stereotyped_type{kind}.txt.{split}"
        out.extend(clean(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    return out


def evaluate(check: BiasCheck, texts: list[str], batch: int) -> list[dict[str, Finding]]:
    out: list[dict[str, Finding]] = []
    for start in range(0, len(texts), batch):
        items = [CheckInput(normalize(t)) for t in texts[start : start + batch]]
        out.extend({f.label: f for f in findings} for findings in check.evaluate(items))
    return out


def rate(results: list[dict[str, Finding]], label: str | None) -> float:
    hits = [any(f.triggered for f in r.values()) if label is None else r[label].triggered for r in results]
    return sum(hits) / len(hits) if hits else 0.0


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def main(argv: Sequence[str] | None = None) -> int:
    from evaluators.runtime import configure_process

    configure_process()  # offline, before any model library is imported
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--examples", type=int, default=5, help="print this many flagged sentences")
    add_scorer_args(parser, "sentences per check.evaluate call")
    parser.add_argument("--data", type=Path, default=DATA, help="the winobias folder")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    check, config = bias_check(args)
    print(f"data: {args.data}")
    print(
        f"scorer: {check.scorer.engine}; thresholds: identity_attack {config.identity_attack_threshold}, "
        f"counterfactual_gap {config.counterfactual_threshold}"
    )
    print()
    header = (
        f"{'set':<7} {'n':>5} | {'any flag':>9} {'id-attack':>9} {'cf-gap':>9} | "
        f"{'mean score':>10} {'mean cf-gap':>11} | {'paired |Δscore|':>15}"
    )
    print(header)
    print("-" * len(header))
    totals: dict[str, list[dict[str, Finding]]] = {"pro": [], "anti": []}
    texts: list[str] = []
    examples: list[dict[str, Finding]] = []  # in the order of ``texts``
    for kind in (1, 2):
        sets = {s: read_set(args.data, s, kind) for s in ("pro", "anti")}
        texts += sets["pro"] + sets["anti"]
        results = {s: evaluate(check, sets[s], args.batch) for s in ("pro", "anti")}
        paired = [
            abs(p["identity_attack"].score - a["identity_attack"].score)
            for p, a in zip(results["pro"], results["anti"], strict=True)
        ]
        for stereotype, res in results.items():
            totals[stereotype].extend(res)
            examples.extend(res)
            print(
                f"{f'{stereotype}-{kind}':<7} {len(res):>5} | {rate(res, None):>9.2%} "
                f"{rate(res, 'identity_attack'):>9.2%} {rate(res, 'counterfactual_gap'):>9.2%} | "
                f"{mean([r['identity_attack'].score for r in res]):>10.4f} "
                f"{mean([r['counterfactual_gap'].score for r in res]):>11.4f} | {mean(paired):>15.4f}"
            )
    print("-" * len(header))
    for label, name in (
        (None, "any finding"),
        ("identity_attack", "identity_attack"),
        ("counterfactual_gap", "cf-gap"),
    ):
        pro, anti = rate(totals["pro"], label), rate(totals["anti"], label)
        print(f"flag-rate gap (pro - anti), {name:<15}: {pro:.2%} - {anti:.2%} = {pro - anti:+.2%}")
    no_terms = sum(
        r["counterfactual_gap"].detail.get("variants", 0) == 0 for r in totals["pro"] + totals["anti"]
    )
    print(f"sentences with no identity term found: {no_terms} of {len(totals['pro']) + len(totals['anti'])}")
    flagged = [(t, r) for t, r in zip(texts, examples, strict=True) if any(f.triggered for f in r.values())]
    for text, r in flagged[: args.examples]:
        gap = r["counterfactual_gap"]
        print(
            f"  flagged {text!r}: score {r['identity_attack'].score:.3f}; "
            f"gap {gap.score:.3f} to {gap.detail.get('variant', '')!r}"
        )
    print(f"time: {time.perf_counter() - started:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
