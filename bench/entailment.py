"""Hallucination check, similarity engine vs NLI engine, on held-out entailment splits.

Data: the test splits ``data/nli/derive.py`` carved out of BEGIN (by knowledge
passage), WiCE (by Wikipedia article), and DocNLI's binary MNLI and FEVER (by
premise). ``nli-minilm`` never trained on them (see data/nli/PROVENANCE.md).

Each row goes through the check as a request would: the premise (a BEGIN
knowledge passage, a whole WiCE evidence page, an MNLI/FEVER premise) is the
``context``, the response or claim is the output; the check splits it into
claims, chunks the context, and the row is predicted *unsupported* when the
``overall`` finding triggers (threshold 0.5, the shipped policy's). The
positive class is **unsupported** (what the check exists to flag): precision,
recall and F1 are for it, AUC uses the overall score, balanced accuracy is
symmetric. Labels: BEGIN ``Fully attributable`` and WiCE ``supported`` are
supported; WiCE ``partially_supported`` counts as unsupported.

``ms/row`` is wall time of ``check.evaluate`` per row (claims and chunks
included), on the machine the bench runs on; it is noisy on a shared CPU.

Run: ``.venv/bin/python bench/entailment.py [--limit 300] [--sets begin,wice] [--threads 2]``.
Import: ``from bench.entailment import evaluate`` returns the figures as a dict.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "nli"
SETS = ("begin", "wice", "mnli", "fever")

if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from evaluators.checks.base import CheckInput  # noqa: E402
from evaluators.checks.hallucination import HallucinationCheck, HallucinationConfig  # noqa: E402
from evaluators.normalize import normalize  # noqa: E402


@dataclass(frozen=True)
class Row:
    context: str
    text: str
    supported: bool
    group: str


def read_set(name: str, data: Path = DATA) -> list[Row]:
    """The held-out rows of one set, as (context, text, supported, subgroup)."""
    with gzip.open(data / f"test_{name}.jsonl.gz", "rt", encoding="utf-8") as fh:
        raw = [json.loads(line) for line in fh if line.strip()]
    if name == "begin":
        return [Row(r["knowledge"], r["response"], bool(r["label"]), r["source"]) for r in raw]
    if name == "wice":
        return [Row("\n".join(r["evidence"]), r["claim"], bool(r["label"]), r["wice_label"]) for r in raw]
    return [Row(r["premise"], r["hypothesis"], bool(r["label"]), name) for r in raw]


def figures(
    unsupported: Sequence[bool], flagged: Sequence[bool], scores: Sequence[float]
) -> dict[str, float]:
    """Precision, recall, F1 (positive class: unsupported), balanced accuracy and AUC."""
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    tp = sum(t and p for t, p in zip(unsupported, flagged, strict=True))
    fp = sum(p and not t for t, p in zip(unsupported, flagged, strict=True))
    fn = sum(t and not p for t, p in zip(unsupported, flagged, strict=True))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    out = {
        "n": float(len(unsupported)),
        "unsupported": float(sum(unsupported)),
        "balanced_accuracy": float(balanced_accuracy_score(unsupported, flagged)),
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
    }
    if 0 < sum(unsupported) < len(unsupported):
        out["auc"] = float(roc_auc_score(unsupported, scores))
    return out


def make_check(
    engine: str, nli_model: str = "nli-minilm", quantize_int8: bool | str = "auto"
) -> HallucinationCheck:
    fields: dict[str, Any] = {"check": "hallucination", "engine": engine, "device": "cpu"}
    if engine == "nli":
        fields |= {"nli_model": nli_model, "quantize_int8": quantize_int8}
    check = HallucinationCheck(HallucinationConfig.model_validate(fields))
    check.load()
    return check


def run_check(
    check: HallucinationCheck, rows: Sequence[Row], batch: int = 16
) -> tuple[list[float], list[bool], float]:
    """Overall score and triggered per row, and seconds spent in ``evaluate``."""
    scores: list[float] = []
    flagged: list[bool] = []
    spent = 0.0
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch]
        items = [CheckInput(normalize(r.text), context=(r.context,)) for r in chunk]
        t = time.perf_counter()
        results = check.evaluate(items)
        spent += time.perf_counter() - t
        for findings in results:
            (overall,) = [f for f in findings if f.label == "overall"]
            scores.append(overall.score)
            flagged.append(overall.triggered)
    return scores, flagged, spent


def evaluate(
    sets: Sequence[str] = SETS,
    engines: Sequence[str] = ("similarity", "nli"),
    *,
    limit: int = 0,
    seed: int = 0,
    nli_model: str = "nli-minilm",
    quantize_int8: bool | str = "auto",
    data: Path = DATA,
) -> dict[str, Any]:
    """``{set: {engine: figures}}`` plus per-subgroup figures under ``set/subgroup`` (BEGIN sources,
    WiCE labels are reported as recall of their own class). ``limit`` samples rows per set (seeded)."""
    checks = {e: make_check(e, nli_model, quantize_int8) for e in engines}
    out: dict[str, Any] = {"engines": {e: c.engine for e, c in checks.items()}}
    nli = checks.get("nli")
    if nli is not None and nli._nli is not None:
        out["nli_precision"] = nli._nli.precision
    for name in sets:
        rows = read_set(name, data)
        if 0 < limit < len(rows):
            rows = random.Random(seed).sample(rows, limit)
        truth = [not r.supported for r in rows]
        for engine, check in checks.items():
            scores, flagged, spent = run_check(check, rows)
            fig = figures(truth, flagged, scores)
            fig["ms_per_row"] = 1000 * spent / max(len(rows), 1)
            out.setdefault(name, {})[engine] = fig
            groups = sorted({r.group for r in rows})
            if len(groups) > 1:
                for g in groups:
                    idx = [i for i, r in enumerate(rows) if r.group == g]
                    sub_truth = [truth[i] for i in idx]
                    if 0 < sum(sub_truth) < len(sub_truth):
                        sub = figures(sub_truth, [flagged[i] for i in idx], [scores[i] for i in idx])
                    else:  # one class only: the share predicted right
                        right = sum(flagged[i] == truth[i] for i in idx)
                        sub = {"n": float(len(idx)), "accuracy": right / len(idx)}
                    out.setdefault(f"{name}/{g}", {})[engine] = sub
    return out


def main(argv: Sequence[str] | None = None) -> int:
    from evaluators.runtime import configure_process

    configure_process()  # offline, before any model library is imported
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--sets", default=",".join(SETS), help="comma-separated: begin,wice,mnli,fever")
    parser.add_argument("--limit", type=int, default=0, help="rows sampled per set (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--nli-model", default="nli-minilm")
    parser.add_argument("--int8", choices=["auto", "on", "off"], default="auto", help="NLI int8 on CPU")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    choices: dict[str, bool | str] = {"auto": "auto", "on": True, "off": False}
    int8 = choices[args.int8]
    started = time.perf_counter()
    result = evaluate(
        [s for s in args.sets.split(",") if s], limit=args.limit, seed=args.seed, nli_model=args.nli_model,
        quantize_int8=int8,
    )  # fmt: skip
    print(f"engines: {result['engines']}; NLI precision: {result.get('nli_precision', '-')}")
    print("positive class: unsupported; threshold 0.5; held-out splits of data/nli (never trained on)")
    header = (
        f"{'set':<22} {'engine':<11} {'n':>5} {'bal.acc':>7} {'prec':>6} {'recall':>6} {'F1':>6} {'AUC':>6}"
    )
    print(header + f" {'ms/row':>7}")
    for key, per_engine in result.items():
        if not isinstance(per_engine, dict) or key == "engines":
            continue
        for engine, f in per_engine.items():
            if "balanced_accuracy" not in f:
                print(f"{key:<22} {engine:<11} {int(f['n']):>5} accuracy {f['accuracy']:.3f}")
                continue
            print(
                f"{key:<22} {engine:<11} {int(f['n']):>5} {f['balanced_accuracy']:>7.3f} {f['precision']:>6.3f} "
                f"{f['recall']:>6.3f} {f['f1']:>6.3f} {f.get('auc', float('nan')):>6.3f} "
                f"{f.get('ms_per_row', float('nan')):>7.1f}"
            )
    print(f"total {time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
