"""Hallucination check on HaluEval general: precision, recall and F1 on ``yes``.

Data: ``../shared/data/halueval-general/general_data.json`` (JSON Lines, read
in place, never copied): 4,507 ChatGPT answers to user queries, labelled
``hallucination`` yes (815) / no (3,692) by annotators.

What the data lacks: grounding documents. Each row has only the user query
and the answer, so the check's grounded mode has nothing but the query to
check claims against, and self-consistency needs more samples of the same
answer from ChatGPT, which cannot be drawn offline. This bench therefore
runs grounded mode with the USER QUERY as the only context document. That
measures whether answer sentences stay on the query's topic, not whether
they are true; a hallucination in an on-topic sentence cannot be seen.
Expect figures near the trivial baseline, and read them as that.

Prediction: a row is predicted ``yes`` when the check's ``overall`` finding
triggers (any claim scores at or above ``--threshold``). Also reported:
ROC AUC of two per-row scores (the max claim score, which is ``overall``,
and the share of unsupported claims) and the best F1 over thresholds of the
max score, which is tuned on the same rows and so optimistic.

Run: ``.venv/bin/python bench/halueval.py [--rows 400] [--seed 0] [--threads 1] [--engine nli]``
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "halueval-general" / "general_data.json"

if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from evaluators.checks.base import CheckInput  # noqa: E402
from evaluators.checks.hallucination import HallucinationCheck, HallucinationConfig  # noqa: E402
from evaluators.normalize import normalize  # noqa: E402


@dataclass(frozen=True)
class Row:
    query: str
    answer: str
    hallucinated: bool


@dataclass(frozen=True)
class Scored:
    row: Row
    max_score: float
    unsupported_share: float
    claims: int
    predicted: bool


def read_rows(path: Path) -> list[Row]:
    rows = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                d = json.loads(line)
                rows.append(Row(d["user_query"], d["chatgpt_response"], d["hallucination"] == "yes"))
    return rows


def prf(truth: Sequence[bool], pred: Sequence[bool]) -> tuple[float, float, float]:
    tp = sum(t and p for t, p in zip(truth, pred, strict=True))
    fp = sum(p and not t for t, p in zip(truth, pred, strict=True))
    fn = sum(t and not p for t, p in zip(truth, pred, strict=True))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def main(argv: Sequence[str] | None = None) -> int:
    from evaluators.runtime import configure_process

    configure_process()  # offline, before any model library is imported
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=400, help="rows sampled at random (0: all 4,507)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--threshold", type=float, default=0.5, help="claim score that counts as unsupported")
    parser.add_argument("--batch", type=int, default=32, help="rows per check.evaluate call")
    parser.add_argument(
        "--threads", type=int, default=0,
        help="torch CPU threads; 0 keeps torch's default (1 beats 2 when the cores are shared)",
    )  # fmt: skip
    parser.add_argument("--data", type=Path, default=DATA, help="general_data.json")
    parser.add_argument(
        "--engine", choices=["similarity", "nli"], default="similarity",
        help="check engine; nli reads the nli-minilm model that `assay models build` makes",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)

    rows = read_rows(args.data)
    if 0 < args.rows < len(rows):
        rows = random.Random(args.seed).sample(rows, args.rows)
    fields = {"check": "hallucination", "threshold": args.threshold, "device": "cpu", "engine": args.engine}
    if args.engine == "nli":
        fields["nli_model"] = "nli-minilm"
    check = HallucinationCheck(HallucinationConfig.model_validate(fields))
    started = time.perf_counter()
    check.load()
    loaded = time.perf_counter()
    scored: list[Scored] = []
    for start in range(0, len(rows), args.batch):
        chunk = rows[start : start + args.batch]
        items = [CheckInput(normalize(r.answer), context=(r.query,)) for r in chunk]
        for row, findings in zip(chunk, check.evaluate(items), strict=True):
            (overall,) = [f for f in findings if f.label == "overall"]
            scored.append(
                Scored(
                    row,
                    overall.score,
                    overall.detail["unsupported_share"],
                    overall.detail["claims"],
                    overall.triggered,
                )
            )
    elapsed = time.perf_counter() - loaded

    from sklearn.metrics import roc_auc_score

    truth = [s.row.hallucinated for s in scored]
    positives = sum(truth)
    print(f"data: {args.data}")
    print(
        f"rows: {len(scored)} sampled (seed {args.seed}) of 4,507; hallucination=yes: {positives} "
        f"({positives / len(scored):.1%}); claims scored: {sum(s.claims for s in scored)}"
    )
    print("context: the user query only (HaluEval general has no grounding documents)")
    print(f"engine: {check.engine}; load {loaded - started:.1f}s, scoring {elapsed:.1f}s")
    print()
    p, r, f = prf(truth, [s.predicted for s in scored])
    print(f"check (overall triggered, threshold {args.threshold}):  P {p:.3f}  R {r:.3f}  F1 {f:.3f}")
    flagged = sum(s.predicted for s in scored)
    print(f"  rows flagged: {flagged} ({flagged / len(scored):.1%})")
    bp, br, bf = prf(truth, [True] * len(truth))
    print(f"baseline (every row yes):                  P {bp:.3f}  R {br:.3f}  F1 {bf:.3f}")
    if 0 < positives < len(truth):
        auc_max = roc_auc_score(truth, [s.max_score for s in scored])
        auc_share = roc_auc_score(truth, [s.unsupported_share for s in scored])
        print(f"ROC AUC: max claim score {auc_max:.3f}; unsupported share {auc_share:.3f} (0.5 = chance)")
    best = max(
        ((t / 100, *prf(truth, [s.max_score >= t / 100 for s in scored])) for t in range(1, 100)),
        key=lambda x: x[3],
    )
    print(
        f"best F1 over thresholds (tuned on these rows, optimistic): threshold {best[0]:.2f}  "
        f"P {best[1]:.3f}  R {best[2]:.3f}  F1 {best[3]:.3f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
