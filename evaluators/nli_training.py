"""Train ``nli-minilm``: the bundled MiniLM as a cross-encoder, (premise, claim) -> P(supported).

The hallucination check's ``nli`` engine loads the result as a transformers
sequence-classification folder: labels ``not_entailment`` (0) and
``entailment`` (1), tokenizer beside it, and ``assay-model.json`` with the
build's held-out figures and its int8 verdict (``quantize_int8: auto``).

Data: ``data/nli/train.jsonl.gz`` (``data/nli/derive.py`` made it from
DocNLI's MNLI, FEVER and MCTest, BEGIN and WiCE; see its PROVENANCE.md).
A seeded sample per source is trained on, plus generated pairs that teach
what similarity cannot see and MNLI rarely shows:

* copies: a sentence of the premise as the claim (supported), since
  grounded answers often repeat the context word for word;
* swaps: a supported claim with one number or name that the premise uses
  replaced by another (unsupported), i.e. a contradiction in the context's
  own words ("1.5 days" -> "30 days", "1932" -> "1952").

CPU budget (the cold ``assay models build`` must stay within minutes on two
cores): one epoch; the word embeddings are frozen (half of MiniLM's
parameters; tokens rare in this data keep their pretrained vectors); the
lowest layers can be frozen too; batches are bucketed by length so short
MNLI pairs do not pay for long windows; premises are truncated, never the
claim.
"""

from __future__ import annotations

import gzip
import json
import math
import random
import re
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from evaluators.batched_encode import encode_batched
from evaluators.embeddings import minilm_path, split_sentences

LABELS = {0: "not_entailment", 1: "entailment"}
METADATA_FILE = "assay-model.json"  # evaluators.checks.hallucination_nli.NLI_METADATA reads it
# int8 is used at inference when it keeps held-out AUC within this of fp32.
INT8_AUC_TOLERANCE = 0.005

DEFAULTS: dict[str, Any] = {
    "seed": 0,
    # Pairs drawn per source from train.jsonl.gz.
    "per_source": {"mnli": 400, "fever": 700, "begin": 3000, "wice": 850, "mctest": 250},
    "copies": 500,  # premise sentence as claim (supported)
    "swaps": 800,  # number or name swapped (unsupported)
    "epochs": 1,
    "batch_size": 16,
    "lr": 1.5e-4,
    "head_lr_mult": 10.0,
    "max_length": 160,
    "freeze_layers": 0,
    "warm_sources": ["begin", "copy", "swap"],
    "warm_share": 0.4,
    "eval_rows": 400,  # per held-out set, in the build's own figures
}

_NUMBER = re.compile(r"(?<![\w.])\d+(?:[.,]\d+)?(?![\w])")
_NAME = re.compile(r"(?<=\s)[A-Z][a-z]{2,}(?:\s[A-Z][a-z]{2,})*")


def read_jsonl_gz(path: Path) -> list[dict[str, Any]]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _other_number(value: str, rng: random.Random) -> str:
    """A different number of the same shape: a nearby year, a scaled count."""
    if re.fullmatch(r"\d{1,3}(?:,\d{3})+", value):  # 1,500: a thousands separator
        return f"{int(value.replace(',', '')) * rng.choice([2, 3, 10]):,}"
    if "." in value or "," in value:
        whole, _, frac = value.replace(",", ".").partition(".")
        return (
            f"{int(whole) + rng.choice([1, 2, 3, 5, 10])}.{frac}"
            if rng.random() < 0.5
            else str(rng.choice([2, 3, 10, 20, 30, 45]))
        )
    n = int(value)
    if 1000 <= n <= 2100:  # a year
        return str(n + rng.choice([-20, -10, -3, -1, 1, 2, 5, 10, 20]))
    return str(
        max(0, n + rng.choice([1, 2, 5, 10, 20]) * rng.choice([-1, 1]))
        if n > 30
        else n * rng.choice([2, 3, 5, 10]) + rng.choice([0, 1])
    )


def swap_detail(premise: str, claim: str, rng: random.Random) -> str | None:
    """``claim`` with one number or name that ``premise`` also uses replaced; None when it has none."""
    numbers = [m for m in _NUMBER.finditer(claim) if m.group() in premise]
    names = [m for m in _NAME.finditer(claim) if m.group() in premise]
    others = sorted({m.group() for m in _NAME.finditer(premise)} - {m.group() for m in names})
    others = [o for o in others if o not in claim]
    # Numbers first (most of what a grounded answer gets wrong), names otherwise.
    if numbers and (not (names and others) or rng.random() < 0.7):
        m = rng.choice(numbers)
        new = _other_number(m.group(), rng)
        return claim[: m.start()] + new + claim[m.end() :] if new != m.group() else None
    if names and others:
        m = rng.choice(names)
        return claim[: m.start()] + rng.choice(others) + claim[m.end() :]
    return None


def generated_pairs(
    rows: Sequence[Mapping[str, Any]], copies: int, swaps: int, rng: random.Random
) -> list[dict[str, Any]]:
    """Copies (label 1) and swaps (label 0) made from the sampled rows' premises and claims."""
    out: list[dict[str, Any]] = []
    order = list(rows)
    rng.shuffle(order)
    copied: list[dict[str, Any]] = []
    for r in order:
        if len(copied) >= copies:
            break
        sentences = [r["premise"][s:e] for s, e in split_sentences(r["premise"])]
        sentences = [s for s in sentences if 6 <= len(s.split()) <= 40]
        if len(sentences) >= 2:
            copied.append(
                {"source": "copy", "premise": r["premise"], "hypothesis": rng.choice(sentences), "label": 1}
            )
    out.extend(copied)
    # Swaps of copies and of real supported claims, so the model cannot learn "verbatim means true".
    positives = copied + [r for r in order if r["label"] == 1]
    rng.shuffle(positives)
    made = 0
    for r in positives:
        if made >= swaps:
            break
        swapped = swap_detail(r["premise"], r["hypothesis"], rng)
        if swapped is not None and swapped != r["hypothesis"]:
            out.append({"source": "swap", "premise": r["premise"], "hypothesis": swapped, "label": 0})
            made += 1
    return out


def sample_rows(
    rows: Sequence[Mapping[str, Any]], per_source: Mapping[str, int], rng: random.Random
) -> list[dict[str, Any]]:
    by_source: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_source.setdefault(str(r["source"]), []).append(dict(r))
    out: list[dict[str, Any]] = []
    for source in sorted(per_source):
        pool = by_source.get(source, [])
        out.extend(rng.sample(pool, min(int(per_source[source]), len(pool))))
    return out


def _metrics(labels: Sequence[int], probs: Sequence[float], threshold: float = 0.5) -> dict[str, float]:
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    pred = [int(p >= threshold) for p in probs]
    out = {"n": float(len(labels)), "balanced_accuracy": float(balanced_accuracy_score(labels, pred))}
    if 0 < sum(labels) < len(labels):
        out["auc"] = float(roc_auc_score(labels, probs))
    return {k: round(v, 4) for k, v in out.items()}


def predict(
    model: Any, tokenizer: Any, pairs: Sequence[tuple[str, str]], *, max_length: int, batch_size: int = 64
) -> list[float]:
    """P(entailment) per (premise, claim), in order, from length-sorted batches."""
    import torch

    model.eval()

    def forward(enc: Any, _batch: list[tuple[str, str]]) -> list[float]:
        probs: list[float] = torch.softmax(model(**enc).logits.float(), dim=-1)[:, 1].tolist()
        return probs

    return encode_batched(
        pairs, tokenizer, forward, batch_size=batch_size, max_length=max_length, kind="pair"
    )


def _eval_sets(data: Path, rows: int, rng: random.Random) -> dict[str, list[tuple[str, str, int]]]:
    """Held-out pairs for the build's own figures: MNLI, FEVER, and BEGIN Wizard-of-Wikipedia rows
    (short knowledge, so one pair per row; the check-level figures with chunking are in
    bench/entailment.py)."""
    sets: dict[str, list[tuple[str, str, int]]] = {}
    for name in ("mnli", "fever"):
        test = read_jsonl_gz(data / f"test_{name}.jsonl.gz")
        sets[name] = [
            (r["premise"], r["hypothesis"], int(r["label"])) for r in rng.sample(test, min(rows, len(test)))
        ]
    begin = [r for r in read_jsonl_gz(data / "test_begin.jsonl.gz") if r["source"] == "wow"]
    sets["begin_wow"] = [
        (r["knowledge"], r["response"], int(r["label"])) for r in rng.sample(begin, min(rows, len(begin)))
    ]
    return sets


def _evaluate(model: Any, tokenizer: Any, pairs: Sequence[tuple[str, str, int]]) -> dict[str, float]:
    probs = predict(model, tokenizer, [(p, h) for p, h, _ in pairs], max_length=256)
    return _metrics([y for _, _, y in pairs], probs)


def train_nli(
    out_dir: Path, data_dir: Path, config: Mapping[str, Any], progress: Callable[[str], None]
) -> dict[str, Any]:
    """Fine-tune MiniLM on ``data_dir/nli`` into ``out_dir``; returns held-out figures."""
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification, get_linear_schedule_with_warmup
    from transformers.utils import logging as hf_logging

    from evaluators.training import _batches

    cfg = {**DEFAULTS, **dict(config)}
    started = time.monotonic()
    seed = int(cfg["seed"])
    rng = random.Random(seed)
    data = Path(data_dir) / "nli"
    base = minilm_path()

    rows = sample_rows(read_jsonl_gz(data / "train.jsonl.gz"), cfg["per_source"], rng)
    rows += generated_pairs(rows, int(cfg["copies"]), int(cfg["swaps"]), rng)
    counts = Counter((r["source"], r["label"]) for r in rows)
    progress(
        f"{len(rows)} training pairs ({', '.join(f'{s}/{y}: {n}' for (s, y), n in sorted(counts.items()))})"
    )

    batch_size, max_length = int(cfg["batch_size"]), int(cfg["max_length"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokenizer = AutoTokenizer.from_pretrained(base, local_files_only=True)
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the new head is "missing" on load: expected
        try:
            model = BertForSequenceClassification.from_pretrained(
                base,
                num_labels=2,
                id2label=LABELS,
                label2id={v: k for k, v in LABELS.items()},
                local_files_only=True,
            )
        finally:
            hf_logging.set_verbosity(verbosity)
        # Frozen word embeddings: half the parameters, and rare tokens keep pretrained vectors.
        model.bert.embeddings.word_embeddings.weight.requires_grad_(False)
        for layer in model.bert.encoder.layer[: int(cfg["freeze_layers"])]:
            layer.requires_grad_(False)

        # Tokenise once; batches then only pad.
        enc = tokenizer(
            [r["premise"] for r in rows],
            [r["hypothesis"] for r in rows],
            truncation="only_first",
            max_length=max_length,
        )
        ids: list[list[int]] = enc["input_ids"]
        types: list[list[int]] = enc["token_type_ids"]
        lengths = [len(x) for x in ids]
        y = torch.tensor([int(r["label"]) for r in rows])
        # Balanced loss: the sources lean 2:1 to "not supported", the check's threshold sits at 0.5.
        pos = float(y.float().mean())
        loss_fn = torch.nn.CrossEntropyLoss(weight=torch.tensor([0.5 / (1 - pos), 0.5 / pos]))

        epochs = int(cfg["epochs"])
        steps = math.ceil(len(rows) / batch_size) * epochs
        # The pooler and head start from nothing (MiniLM was trained with mean pooling, not on
        # [CLS]): a higher rate there gets past the flat start within the few hundred steps.
        head = ("classifier.", "bert.pooler.")
        lr = float(cfg["lr"])
        groups: dict[tuple[bool, bool], list[Any]] = {}
        for n, p in model.named_parameters():
            if p.requires_grad:
                groups.setdefault((n.startswith(head), n.endswith(("bias", "LayerNorm.weight"))), []).append(
                    p
                )
        optimizer = torch.optim.AdamW(
            [
                {
                    "params": params,
                    "lr": lr * float(cfg["head_lr_mult"]) if is_head else lr,
                    "weight_decay": 0.0 if no_decay else 0.01,
                }
                for (is_head, no_decay), params in sorted(groups.items())
            ],
            lr=lr,
        )
        scheduler = get_linear_schedule_with_warmup(optimizer, max(1, steps // 10), steps)
        shuffle = torch.Generator().manual_seed(seed)
        texts = ["x" * n for n in lengths]  # _batches buckets by len(text)
        step, last_pct, running = 0, -1, 0.0
        train_started = time.monotonic()
        model.train()
        # Curriculum: a share of the easiest, in-domain pairs (BEGIN, copies, swaps) first. From
        # a mean-pooling encoder the [CLS] head starts flat, and on the mixed data (MNLI, MCTest
        # windows, WiCE) it stayed flat for the whole budget; these get it moving.
        warm_sources = set(cfg["warm_sources"])
        warm = [i for i, r in enumerate(rows) if r["source"] in warm_sources]
        first = set(random.Random(seed).sample(warm, round(len(warm) * float(cfg["warm_share"]))))
        phases = [sorted(first), [i for i in range(len(rows)) if i not in first]]
        for _epoch in range(epochs):
            batches = [b for phase in phases for b in _batches(phase, texts, batch_size, shuffle)]
            for idx in batches:
                width = max(lengths[i] for i in idx)
                input_ids = torch.zeros((len(idx), width), dtype=torch.long)
                token_types = torch.zeros_like(input_ids)
                mask = torch.zeros_like(input_ids)
                for row, i in enumerate(idx):
                    input_ids[row, : lengths[i]] = torch.tensor(ids[i])
                    token_types[row, : lengths[i]] = torch.tensor(types[i])
                    mask[row, : lengths[i]] = 1
                logits = model(input_ids=input_ids, token_type_ids=token_types, attention_mask=mask).logits
                loss = loss_fn(logits, y[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                step += 1
                running = 0.9 * running + 0.1 * loss.item() if step > 1 else loss.item()
                pct = 100 * step // steps
                if pct // 5 > last_pct // 5 or step == steps:
                    last_pct = pct
                    elapsed = time.monotonic() - train_started
                    progress(f"training {pct}% (step {step}/{steps}, loss {running:.3f}, {elapsed:.0f} s)")
        train_seconds = time.monotonic() - train_started

        # Held-out figures, fp32 and int8; int8 is recommended when AUC holds.
        eval_rng = random.Random(seed + 1)
        sets = _eval_sets(data, int(cfg["eval_rows"]), eval_rng)
        model.eval()
        fp32 = {name: _evaluate(model, tokenizer, s) for name, s in sets.items()}
        progress("held-out (fp32): " + json.dumps(fp32))
        import copy
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao is deprecated in favour of torchao
            qmodel = torch.ao.quantization.quantize_dynamic(
                copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8
            )
        int8 = {name: _evaluate(qmodel, tokenizer, s) for name, s in sets.items()}
        worst = max(fp32[n].get("auc", 0.0) - int8[n].get("auc", 0.0) for n in sets)
        recommended = worst <= INT8_AUC_TOLERANCE
        verdict = "on" if recommended else "off"
        progress(f"held-out (int8): {json.dumps(int8)}; worst AUC drop {worst:.4f}: int8 {verdict}")

    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    metrics: dict[str, Any] = {
        "train_pairs": len(rows),
        "train_pairs_by_source": {f"{s}/{y}": n for (s, y), n in sorted(counts.items())},
        "train_seconds": round(train_seconds, 1),
        "seconds": round(time.monotonic() - started, 1),
        "final_loss": round(running, 4),
        "held_out_fp32": fp32,
        "held_out_int8": int8,
    }
    meta = {
        "format": "transformers-sequence-classification",
        "task": "premise supports claim (binary NLI)",
        "base_model": "sentence-transformers/all-MiniLM-L6-v2",
        "labels": LABELS,
        "config": cfg,
        "int8": {
            "recommended": recommended,
            "worst_auc_drop": round(worst, 4),
            "tolerance": INT8_AUC_TOLERANCE,
        },
        "metrics": metrics,
    }
    (Path(out_dir) / METADATA_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return metrics
