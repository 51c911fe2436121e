"""Train the local toxicity model and measure it on a held-out split.

Builds a Jigsaw-format training set from the shared development data (in a
temp dir, never inside the project), holds out a stratified test split,
fine-tunes MiniLM with ``evaluators.training.train_toxicity`` into
``.cache/models/toxicity-minilm`` and scores the held-out split through
``ToxicityCheck`` (so normalisation and batching are the production path),
next to alt-profanity-check on the same texts.

Label mapping (Jigsaw columns: toxic, severe_toxic, obscene, threat, insult,
identity_hate):

* davidson-hate-offensive: 0 hate -> toxic, insult, identity_hate;
  1 offensive -> toxic, obscene (mostly casual profanity and slurs, not aimed
  insults); 2 neither -> none.
* toxigen-demonstrations: hate -> toxic, identity_hate; neutral -> none.
* jigsaw-toxic-sample: as labelled.

No source labels severe_toxic or threat beyond the few Jigsaw rows, so the
model learns little for them; the report says where a label has too few
positives to measure.

    .venv/bin/python bench/train_toxicity.py [--out DIR] [--max-rows 3000] [--epochs 2]

Defaults (3,000 rows, 2 epochs, lr 1e-4, max_length 64, one torch thread)
keep the run near 4 minutes on two shared cores. One epoch leaves the
scores too timid to cross the 0.8 policy thresholds (F1 0 at 0.8), and lr
5e-5 over 2 epochs on 4,000 rows took ~8 minutes for lower figures.
"""

from __future__ import annotations

import argparse
import csv
import html
import json
import random
import re
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
DEFAULT_OUT = ROOT / ".cache" / "models" / "toxicity-minilm"

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CLASSES = ("toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate")
LABELS = ("toxicity", "severe_toxicity", "obscene", "threat", "insult", "identity_attack")
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class Row:
    text: str
    labels: tuple[int, ...]
    source: str
    """Source and its original class, e.g. ``davidson:hate``: the stratification key."""


def _clean(text: str) -> str:
    return _SPACE.sub(" ", html.unescape(text)).strip()


def _labels(*names: str) -> tuple[int, ...]:
    return tuple(int(c in names) for c in CLASSES)


def load_davidson(rng: random.Random, per_class: int) -> list[Row]:
    """All hate tweets plus up to ``per_class`` offensive and neither tweets."""
    mapping = {
        "0": ("hate", _labels("toxic", "insult", "identity_hate")),
        "1": ("offensive", _labels("toxic", "obscene")),
        "2": ("neither", _labels()),
    }
    by_class: dict[str, list[Row]] = {k: [] for k in mapping}
    with (DATA / "davidson-hate-offensive" / "labeled_data.csv").open(newline="") as fh:
        for rec in csv.DictReader(fh):
            name, labels = mapping[rec["class"]]
            text = _clean(rec["tweet"])
            if text:
                by_class[rec["class"]].append(Row(text, labels, f"davidson:{name}"))
    out = list(by_class["0"])
    for key in ("1", "2"):
        rows = by_class[key]
        out.extend(rng.sample(rows, min(per_class, len(rows))))
    return out


def load_toxigen() -> list[Row]:
    out = []
    with (DATA / "toxigen-demonstrations" / "toxigen_demonstrations.csv").open(newline="") as fh:
        for rec in csv.DictReader(fh):
            hate = rec["label"] == "hate"
            labels = _labels("toxic", "identity_hate") if hate else _labels()
            out.append(Row(_clean(rec["text"]), labels, f"toxigen:{rec['label']}"))
    return out


def load_jigsaw() -> list[Row]:
    out = []
    path = DATA / "jigsaw-toxic-sample" / "jigsaw_toxic_train_sample.csv"
    with path.open(newline="") as fh:
        for rec in csv.DictReader(fh):
            labels = tuple(int(float(rec[c]) >= 0.5) for c in CLASSES)
            out.append(Row(_clean(rec["comment_text"]), labels, f"jigsaw:{int(labels[0])}"))
    return out


def build_datasets(seed: int, test_fraction: float, davidson_per_class: int) -> tuple[list[Row], list[Row]]:
    """Train and held-out rows, stratified on source and original class; same seed, same split."""
    from sklearn.model_selection import train_test_split

    rng = random.Random(seed)
    rows = load_davidson(rng, davidson_per_class) + load_toxigen() + load_jigsaw()
    train, test = train_test_split(
        rows, test_size=test_fraction, random_state=seed, stratify=[r.source for r in rows]
    )
    return list(train), list(test)


def write_jigsaw_csv(rows: list[Row], path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "comment_text", *CLASSES, "source"])
        for i, r in enumerate(rows):
            writer.writerow([f"r{i}", r.text, *r.labels, r.source])


def _auc(y: list[int], s: list[float]) -> float | None:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, s)) if 0 < sum(y) < len(y) else None


def _prf(y: list[int], s: list[float], threshold: float) -> dict[str, float]:
    from sklearn.metrics import precision_recall_fscore_support

    pred = [int(v >= threshold) for v in s]
    p, r, f, _ = precision_recall_fscore_support(y, pred, average="binary", zero_division=0)
    return {"precision": float(p), "recall": float(r), "f1": float(f)}


def evaluate(out_dir: Path, test: list[Row], device: str) -> dict[str, Any]:
    """Score the held-out rows through ToxicityCheck with both tiers on every text."""
    from evaluators.checks.base import CheckInput
    from evaluators.checks.toxicity import PROFANITY_ENGINE, ToxicityCheck, ToxicityConfig
    from evaluators.normalize import normalize

    cfg = ToxicityConfig.model_validate(
        {
            "check": "toxicity",
            "detoxify": {"checkpoint": str(out_dir), "device": device, "max_length": 128},
        }
    )
    check = ToxicityCheck(cfg)
    check.load()
    started = time.monotonic()
    results = check.evaluate([CheckInput(normalize(r.text)) for r in test])
    seconds = time.monotonic() - started

    model_scores: dict[str, list[float]] = {label: [] for label in LABELS}
    profanity: list[float] = []
    for findings in results:
        for f in findings:
            if f.engine == PROFANITY_ENGINE:
                profanity.append(f.score)
            else:
                model_scores[f.label].append(f.score)

    prof_threshold = cfg.profanity.threshold if cfg.profanity else 0.8
    per_label: dict[str, Any] = {}
    for j, label in enumerate(LABELS):
        y = [r.labels[j] for r in test]
        rule = cfg.labels[label]  # type: ignore[index]
        per_label[label] = {
            "positives": sum(y),
            "threshold": rule.threshold,
            "minilm_auc": _auc(y, model_scores[label]),
            "minilm": _prf(y, model_scores[label], rule.threshold),
            # One profanity score for every label: how far a lexical score carries.
            "profanity_auc": _auc(y, profanity),
            "profanity": _prf(y, profanity, prof_threshold),
        }

    per_source: dict[str, Any] = {}
    for source in sorted({r.source.split(":")[0] for r in test}):
        idx = [i for i, r in enumerate(test) if r.source.startswith(source + ":")]
        y = [test[i].labels[0] for i in idx]
        per_source[source] = {
            "rows": len(idx),
            "toxic": sum(y),
            "minilm_auc": _auc(y, [model_scores["toxicity"][i] for i in idx]),
            "minilm_f1": _prf(y, [model_scores["toxicity"][i] for i in idx], 0.8)["f1"],
            "profanity_auc": _auc(y, [profanity[i] for i in idx]),
            "profanity_f1": _prf(y, [profanity[i] for i in idx], prof_threshold)["f1"],
        }
    return {
        "test_rows": len(test),
        "profanity_threshold": prof_threshold,
        "scoring_seconds": round(seconds, 2),
        "per_label": per_label,
        "toxicity_by_source": per_source,
    }


def _fmt(v: float | None) -> str:
    return "  n/a" if v is None else f"{v:.3f}"


def print_report(train_report: Any, ev: dict[str, Any]) -> None:
    print(
        f"\ntrained in {train_report.seconds:.0f}s on {train_report.train_rows} rows "
        f"({train_report.val_rows} validation), val loss {train_report.val_loss:.4f}"
    )
    print("validation AUC:", {k: round(v, 3) for k, v in train_report.val_auc.items()})
    print(
        f"\nheld-out test: {ev['test_rows']} rows, scored in {ev['scoring_seconds']}s "
        f"(both tiers, every text)"
    )
    head = f"{'label':16} {'pos':>4} {'thr':>4} | {'MiniLM AUC':>10} {'F1':>6} {'P':>6} {'R':>6}"
    print(head + f" | {'profanity AUC':>13} {'F1@' + str(ev['profanity_threshold']):>7}")
    for label, m in ev["per_label"].items():
        print(
            f"{label:16} {m['positives']:>4} {m['threshold']:>4} | {_fmt(m['minilm_auc']):>10} "
            f"{m['minilm']['f1']:>6.3f} {m['minilm']['precision']:>6.3f} "
            f"{m['minilm']['recall']:>6.3f} | {_fmt(m['profanity_auc']):>13} "
            f"{m['profanity']['f1']:>7.3f}"
        )
    print("\ntoxicity by source (F1 at 0.8 for both):")
    for source, m in ev["toxicity_by_source"].items():
        print(
            f"  {source:9} rows {m['rows']:>4} toxic {m['toxic']:>4} | MiniLM AUC "
            f"{_fmt(m['minilm_auc'])} F1 {m['minilm_f1']:.3f} | profanity AUC "
            f"{_fmt(m['profanity_auc'])} F1 {m['profanity_f1']:.3f}"
        )


def main(argv: list[str] | None = None) -> int:
    from evaluators.runtime import configure_process

    configure_process()  # offline, before any model library is imported
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="checkpoint folder to write")
    parser.add_argument("--max-rows", type=int, default=3000, help="training rows used (cap)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument(
        "--davidson-per-class", type=int, default=1800,
        help="offensive and neither tweets sampled (all hate tweets are kept)",
    )  # fmt: skip
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch CPU threads, 0 for torch's default; on two cores shared with other "
        "work, 2 threads trained 3-5x slower than 1",
    )  # fmt: skip
    parser.add_argument("--report", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)

    from evaluators.training import TrainProgress, train_toxicity

    train, test = build_datasets(args.seed, args.test_fraction, args.davidson_per_class)
    counts = Counter(r.source for r in train)
    print(f"train {len(train)} rows, test {len(test)} rows")
    print(f"train by source: {dict(sorted(counts.items()))}")

    def progress(event: TrainProgress) -> None:
        if event.step % 20 == 0 or event.step == event.total_steps:
            where = f"epoch {event.epoch} step {event.step}/{event.total_steps}"
            print(f"  {where} loss {event.loss:.4f}", flush=True)

    with tempfile.TemporaryDirectory(prefix="assay-tox-") as tmp:
        data = Path(tmp) / "train.csv"
        write_jigsaw_csv(train, data)
        report = train_toxicity(
            data,
            args.out,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            max_length=args.max_length,
            max_rows=args.max_rows,
            seed=args.seed,
            device=args.device,
            progress=progress,
        )
    ev = evaluate(report.path, test, args.device)
    print_report(report, ev)
    if args.report:
        args.report.write_text(
            json.dumps({"train": report.to_dict(), "heldout": ev}, indent=2) + "\n",
            encoding="utf-8",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
