"""Check quality in one table: every check, every development set, old engine beside new.

Every figure is on data the check's models never trained on:

* toxicity: the held-out ``test`` split of ``data/abuse/corpus.csv``, OLID's official
  test set and ConvAbuse's EMNLP test split (the abuse model trains on OLID's and
  ConvAbuse's train splits only), and the held-out ``test`` template families of
  ``data/abuse/templates.yaml`` (Assay's own functional suite: templates never trained on).
  Old engine: alt-profanity-check, the only tier the shipped policies ran before.
  New: the trained ``abuse-minilm`` Detoxify checkpoint, fp32 and int8.
* hallucination: ``bench/entailment.py`` (held-out BEGIN / WiCE / MNLI / FEVER splits).
* PII: ``bench/pii_quality.py`` (NER-derived set, Presidio's tables, name recall by group; the
  candidate engines side by side, the shipped default among them).

Scores go through the production path (``ToxicityCheck`` with normalisation and
batching). Thresholds are the shipped ``default`` policy's.

    .venv/bin/python bench/quality.py [--only toxicity,pii,hallucination] [--json out.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from evaluators.abuse_data import LABELS, UNKNOWN, load_corpus, load_templates  # noqa: E402
from evaluators.build import DATA_DIR  # noqa: E402


def binary_metrics(y: Sequence[int], scores: Sequence[float], threshold: float) -> dict[str, float]:
    """Precision, recall, F1, balanced accuracy at ``threshold`` and ROC AUC."""
    from sklearn.metrics import roc_auc_score

    pred = [s >= threshold for s in scores]
    tp = sum(1 for p, t in zip(pred, y, strict=True) if p and t)
    fp = sum(1 for p, t in zip(pred, y, strict=True) if p and not t)
    fn = sum(1 for p, t in zip(pred, y, strict=True) if not p and t)
    tn = len(y) - tp - fp - fn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    tnr = tn / (tn + fp) if tn + fp else 0.0
    auc = float(roc_auc_score(y, scores)) if 0 < sum(y) < len(y) else float("nan")
    return {
        "n": len(y),
        "pos": sum(y),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "balanced_accuracy": (recall + tnr) / 2,
        "auc": auc,
    }


# --- toxicity -------------------------------------------------------------------------------


def _toxicity_scorers() -> dict[str, tuple[Callable[[list[str]], list[dict[str, float]]], dict[str, float]]]:
    """engine name -> (score texts -> per-text {label: score}, thresholds)."""
    from evaluators.checks.base import CheckInput
    from evaluators.checks.toxicity import ToxicityCheck, ToxicityConfig
    from evaluators.normalize import normalize
    from evaluators.policy import load_policy_file

    default = load_policy_file(ROOT / "policies" / "default.yaml")
    tox = next(c for c in default.policy.output if c.check == "toxicity")
    policy_thresholds = {k: v.threshold for k, v in (tox.labels or {}).items()}

    def run(config: Any) -> Callable[[list[str]], list[dict[str, float]]]:
        check = ToxicityCheck(config)
        check.load()

        def score(texts: list[str]) -> list[dict[str, float]]:
            out = []
            for start in range(0, len(texts), 64):
                batch = [CheckInput(normalize(t)) for t in texts[start : start + 64]]
                for findings in check.evaluate(batch):
                    out.append({f.label: f.score for f in findings})
            return out

        return score

    old = ToxicityConfig(check="toxicity")
    scorers: dict[str, tuple[Callable[[list[str]], list[dict[str, float]]], dict[str, float]]] = {
        "alt-profanity-check (before)": (run(old), {"toxicity": 0.8}),
    }
    for int8 in (False, True):
        cfg = ToxicityConfig(
            check="toxicity",
            profanity=None,
            detoxify={"checkpoint": "abuse-minilm", "quantize_int8": int8},
        )
        name = f"abuse-minilm {'int8' if int8 else 'fp32'}"
        scorers[name] = (run(cfg), {label: policy_thresholds.get(label, 0.5) for label in LABELS})
    return scorers


def _derive_clean() -> Callable[[str], str]:
    """The Twitter clean-up of data/abuse/derive.py, so test texts look like training's.

    Loaded from its path: data/abuse and data/nli each have a derive.py, so a bare
    ``import derive`` would take whichever comes first on sys.path.
    """
    import importlib.util

    spec = importlib.util.spec_from_file_location("assay_abuse_derive", DATA_DIR / "abuse" / "derive.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    clean: Callable[[str], str] = module.clean
    return clean


def _olid_test() -> list[tuple[str, tuple[int, ...]]]:
    clean = _derive_clean()
    tweets = {}
    with (SHARED / "olid" / "testset-levela.tsv").open(encoding="utf-8") as fh:
        for r in csv.DictReader(fh, delimiter="\t"):
            tweets[r["id"]] = clean(r["tweet"])
    rows = []
    with (SHARED / "olid" / "labels-levela.csv").open(encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            off = int(r["label"] == "OFF")
            labels = [UNKNOWN] * len(LABELS)
            labels[LABELS.index("toxicity")] = off
            rows.append((tweets[r["id"]], tuple(labels)))
    return rows


def _convabuse_test() -> list[tuple[str, tuple[int, ...]]]:
    clean = _derive_clean()
    rows = []
    with (SHARED / "convabuse" / "ConvAbuseEMNLPtest.csv").open(encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            votes = []
            for a in range(1, 9):
                sev = [v for v in ("1", "0", "-1", "-2", "-3") if r.get(f"Annotator{a}_is_abuse.{v}") == "1"]
                if sev:
                    votes.append(int(sev[0]))
            if not votes or not r["user"].strip():
                continue
            labels = [UNKNOWN] * len(LABELS)
            labels[LABELS.index("toxicity")] = int(sum(v < 0 for v in votes) * 2 > len(votes))
            rows.append((clean(r["user"]), tuple(labels)))
    return rows


def toxicity_quality() -> dict[str, Any]:
    sets: dict[str, list[tuple[str, tuple[int, ...]]]] = {
        "corpus test split": [(e.text, e.labels) for e in load_corpus(DATA_DIR, "test")],
    }
    if SHARED.is_dir():
        sets["OLID official test (offensive)"] = _olid_test()
        sets["ConvAbuse EMNLP test (abusive)"] = _convabuse_test()
    _, cases = load_templates(DATA_DIR, "test")

    out: dict[str, Any] = {"sets": {}, "families": {}, "ms_per_text": {}}
    for engine, (score, thresholds) in _toxicity_scorers().items():
        started = time.perf_counter()
        n_texts = 0
        for set_name, rows in sets.items():
            texts = [t for t, _ in rows]
            scored = score(texts)
            n_texts += len(texts)
            for j, label in enumerate(LABELS):
                keep = [i for i, (_, lab) in enumerate(rows) if lab[j] != UNKNOWN]
                y = [rows[i][1][j] for i in keep]
                if not keep or not 0 < sum(y) < len(y):
                    continue
                # The old engine has one score (profanity), read as every label's.
                key = label if label in scored[0] else "toxicity"
                thr = thresholds.get(key, 0.5)
                m = binary_metrics(y, [scored[i][key] for i in keep], thr)
                out["sets"].setdefault(f"{set_name} / {label}", {})[engine] = m
        scored = score([c.text for c in cases])
        n_texts += len(cases)
        fams: dict[str, dict[str, Any]] = {}
        for case, s in zip(cases, scored, strict=True):
            ok = all(
                (s.get(lab, s["toxicity"]) >= thresholds.get(lab if lab in s else "toxicity", 0.5))
                == bool(want)
                for lab, want in case.expect.items()
            )
            fam = fams.setdefault(case.family, {"hateful": case.hateful, "n": 0, "correct": 0})
            fam["n"] += 1
            fam["correct"] += int(ok)
        for name, fam in fams.items():
            out["families"].setdefault(name, {"hateful": fam["hateful"], "n": fam["n"]})[engine] = (
                fam["correct"] / fam["n"]
            )
        out["ms_per_text"][engine] = 1000 * (time.perf_counter() - started) / n_texts
    return out


def print_toxicity(res: dict[str, Any]) -> None:
    engines = list(res["ms_per_text"])
    print(
        "\n## toxicity: precision / recall / F1 / balanced accuracy / AUC at the default policy's thresholds"
    )
    print(f"{'set / label':48} {'n':>5} {'pos':>5}  " + "  ".join(f"{e:>34}" for e in engines))
    for key, per in res["sets"].items():
        first = next(iter(per.values()))
        cells = []
        for e in engines:
            m = per.get(e)
            cells.append(
                f"{m['precision']:.2f} {m['recall']:.2f} {m['f1']:.2f} {m['balanced_accuracy']:.2f} {m['auc']:.3f}"
                if m
                else "-"
            )
        print(f"{key:48} {first['n']:>5} {first['pos']:>5}  " + "  ".join(f"{c:>34}" for c in cells))
    # A case counts as right when every label its family expects (e.g. hate and threat for
    # threats at a group) is on the expected side of its threshold, so a hateful family's
    # figure is stricter than the build's recall of the hate label alone.
    print(
        "\n## toxicity: held-out template families (share of cases with every expected label right;"
        " for hateful families, recall over all their expected labels)"
    )
    print(f"{'family':24} {'kind':>9} {'n':>4}  " + "  ".join(f"{e:>30}" for e in engines))
    for name, fam in sorted(res["families"].items(), key=lambda kv: (not kv[1]["hateful"], kv[0])):
        kind = "hateful" if fam["hateful"] else "non-hate"
        print(f"{name:24} {kind:>9} {fam['n']:>4}  " + "  ".join(f"{fam[e]:>30.3f}" for e in engines))
    print(
        "\nms per text (batches of 64, this machine): "
        + ", ".join(f"{e} {v:.2f}" for e, v in res["ms_per_text"].items())
    )


def main() -> int:
    from evaluators.runtime import configure_process

    configure_process()  # offline, before any model library is imported
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="toxicity,hallucination,pii")
    parser.add_argument("--json", default=None, help="also write every figure to this file")
    parser.add_argument("--limit", type=int, default=0, help="rows per hallucination/PII set (0: all)")
    args = parser.parse_args()
    wanted = set(args.only.split(","))
    results: dict[str, Any] = {}
    if "toxicity" in wanted:
        results["toxicity"] = toxicity_quality()
        print_toxicity(results["toxicity"])
    # The hallucination and PII parts are their own benchmarks; run them in this process
    # with the same limits and collect their JSON figures.
    out_dir = Path(args.json).parent if args.json else Path(tempfile.mkdtemp(prefix="assay-quality-"))
    limit = ["--limit", str(args.limit)] if args.limit else []
    if "hallucination" in wanted:
        from bench import entailment

        print("\n## hallucination (bench/entailment.py)")
        entailment.main([*limit, "--json", str(out_dir / "entailment.json")])
        results["hallucination"] = json.loads((out_dir / "entailment.json").read_text())
    if "pii" in wanted:
        from bench import pii_quality

        print("\n## PII (bench/pii_quality.py)")
        pii_quality.main([*limit, "--json", str(out_dir / "pii_quality.json")])
        results["pii"] = json.loads((out_dir / "pii_quality.json").read_text())
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
