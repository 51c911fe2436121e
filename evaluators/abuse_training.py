"""The default abuse classifier: training on ``evaluators.abuse_data``, and its evaluation.

The model is all-MiniLM-L6-v2 with a six-way multi-label head (``abuse_data.LABELS``),
saved as a Detoxify checkpoint, so the toxicity check loads it through
``detoxify.Detoxify(checkpoint=...)`` like any other.

Two CPU cores cannot fine-tune all of MiniLM on ~15k texts in minutes, so the
bottom layers stay frozen: their output is computed once and cached, and only
the top ``train_layers`` layers, the pooler and the head train, for several
epochs, at a fraction of the cost of full fine-tuning.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from evaluators.abuse_data import (
    LABELS,
    UNKNOWN,
    Example,
    FamilyCase,
    load_corpus,
    load_templates,
    prepare,
)
from evaluators.batched_encode import encode_batched
from evaluators.training import CHECKPOINT_FILE, METADATA_FILE, default_base_model


def _freeze_cache(
    model: Any, tokenizer: Any, texts: Sequence[str], frozen: int, max_length: int
) -> list[Any]:
    """Hidden states after the embeddings and the first ``frozen`` layers, one fp16 tensor per text."""
    import torch
    from transformers.masking_utils import create_bidirectional_mask

    bert = model.bert

    def forward(enc: Any, _batch: list[str]) -> list[Any]:
        h = bert.embeddings(input_ids=enc["input_ids"], token_type_ids=enc["token_type_ids"])
        mask = create_bidirectional_mask(
            config=model.config, inputs_embeds=h, attention_mask=enc["attention_mask"]
        )
        for layer in bert.encoder.layer[:frozen]:
            h = layer(h, attention_mask=mask)
        lengths = enc["attention_mask"].sum(dim=1).tolist()
        return [h[row, :n].to(torch.float16).clone() for row, n in enumerate(lengths)]

    return encode_batched(texts, tokenizer, forward, batch_size=64, max_length=max_length)


def _top_forward(model: Any, states: Sequence[Any], frozen: int) -> Any:
    """Logits from cached states through the trainable top layers, pooler and head."""
    import torch
    from transformers.masking_utils import create_bidirectional_mask

    longest = max(int(s.shape[0]) for s in states)
    h = torch.zeros(len(states), longest, states[0].shape[1])
    attention = torch.zeros(len(states), longest, dtype=torch.long)
    for row, s in enumerate(states):
        h[row, : s.shape[0]] = s.float()
        attention[row, : s.shape[0]] = 1
    mask = create_bidirectional_mask(config=model.config, inputs_embeds=h, attention_mask=attention)
    for layer in model.bert.encoder.layer[frozen:]:
        h = layer(h, attention_mask=mask)
    return model.classifier(model.dropout(model.bert.pooler(h)))


def predict(
    model: Any, tokenizer: Any, texts: Sequence[str], *, max_length: int, batch_size: int = 64
) -> Any:
    """Sigmoid scores, one row per text in order (the whole model, as the check runs it)."""
    import torch

    model.eval()
    rows = encode_batched(
        texts,
        tokenizer,
        lambda enc, _batch: torch.sigmoid(model(**enc).logits.float()).unbind(),
        batch_size=batch_size,
        max_length=max_length,
    )
    return torch.stack(rows) if rows else torch.zeros(0, len(LABELS))


def label_auc(labels: Sequence[Sequence[int]], scores: Any) -> dict[str, float]:
    """ROC AUC per label over rows where that label is known and both classes occur."""
    from sklearn.metrics import roc_auc_score

    out: dict[str, float] = {}
    for j, name in enumerate(LABELS):
        rows = [i for i, r in enumerate(labels) if r[j] != UNKNOWN]
        y = [labels[i][j] for i in rows]
        if 0 < sum(y) < len(y):
            out[name] = round(float(roc_auc_score(y, [float(scores[i, j]) for i in rows])), 4)
    return out


def family_accuracy(
    cases: Sequence[FamilyCase], scores: Any, thresholds: Mapping[str, float]
) -> dict[str, dict[str, Any]]:
    """Per family: share of cases whose every expected label decision is right."""
    out: dict[str, dict[str, Any]] = {}
    for i, case in enumerate(cases):
        ok = all(
            (float(scores[i, LABELS.index(name)]) >= thresholds[name]) == bool(want)
            for name, want in case.expect.items()
        )
        fam = out.setdefault(case.family, {"hateful": case.hateful, "n": 0, "correct": 0})
        fam["n"] += 1
        fam["correct"] += int(ok)
    for fam in out.values():
        fam["accuracy"] = round(fam["correct"] / fam["n"], 4)
    return out


def _config_dict(folder: Path, config: Mapping[str, Any]) -> dict[str, Any]:
    """The training config in the layout Detoxify's checkpoints carry (its configs/*.json)."""
    return {
        "name": "Assay_MiniLM_Abuse",
        "arch": {
            "type": "MiniLM",
            "args": {
                "num_classes": len(LABELS),
                # Detoxify calls from_pretrained(model_type) first: the folder keeps it offline.
                "model_type": str(folder),
                "model_name": "BertForSequenceClassification",
                "tokenizer_name": "BertTokenizer",
            },
        },
        "dataset": {"type": "AssayAbuse", "args": {"classes": list(LABELS)}},
        **{k: v for k, v in config.items()},
    }


def _quantized(model: Any) -> Any:
    import copy
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao dynamic quantization is deprecated, still works
        return torch.ao.quantization.quantize_dynamic(
            copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8
        )


def train_abuse(
    out_dir: Path, data_dir: Path, config: Mapping[str, Any], progress: Callable[[str], None]
) -> dict[str, Any]:
    """Train the abuse classifier into ``out_dir`` (a Detoxify checkpoint folder); return metrics."""
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification
    from transformers.utils import logging as hf_logging

    started = time.monotonic()
    seed = int(config.get("seed", 0))
    epochs = int(config.get("epochs", 3))
    batch_size = int(config.get("batch_size", 32))
    lr = float(config.get("lr", 1e-4))
    max_length = int(config.get("max_length", 64))
    train_layers = int(config.get("train_layers", 2))
    template_weight = int(config.get("template_repeat", 2))

    base = default_base_model()
    corpus = load_corpus(data_dir, "train")
    template_examples, _ = load_templates(data_dir, "train", seed=seed)
    # Small families (a handful of threats or sexual remarks) would vanish among thousands of
    # corpus rows: repeat each family to at least `min_family_rows`.
    by_family: dict[str, list[Example]] = {}
    for e in template_examples:
        by_family.setdefault(e.family, []).append(e)
    min_rows = int(config.get("min_family_rows", 0))
    repeated: list[Example] = []
    for rows in by_family.values():
        repeated.extend(rows * max(template_weight, math.ceil(min_rows / len(rows))))
    examples = corpus + repeated
    texts = [prepare(e.text) for e in examples]
    y = torch.tensor([e.labels for e in examples], dtype=torch.float32)
    known = (y != UNKNOWN).float()
    y = y.clamp(min=0)
    progress(
        f"{len(corpus)} corpus rows + {len(template_examples)} template rows, {len(repeated)} with repeats"
    )

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        rng = random.Random(seed)
        tokenizer = AutoTokenizer.from_pretrained(base, local_files_only=True)
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the new head is reported as missing weights: expected
        try:
            model = BertForSequenceClassification.from_pretrained(
                base,
                num_labels=len(LABELS),
                problem_type="multi_label_classification",
                id2label=dict(enumerate(LABELS)),
                label2id={name: i for i, name in enumerate(LABELS)},
                local_files_only=True,
            )
        finally:
            hf_logging.set_verbosity(verbosity)
        layers = len(model.bert.encoder.layer)
        frozen = max(0, layers - train_layers)
        for p in model.parameters():
            p.requires_grad_(False)
        trainable = [*model.bert.encoder.layer[frozen:], model.bert.pooler, model.classifier]
        params = [p for module in trainable for p in module.parameters()]
        for p in params:
            p.requires_grad_(True)

        t0 = time.monotonic()
        model.eval()
        states = _freeze_cache(model, tokenizer, texts, frozen, max_length)
        progress(f"cached the frozen {frozen} layers for {len(texts)} texts in {time.monotonic() - t0:.0f} s")

        # Length-bucketed batches: shuffle, sort within pools, cut, shuffle the batches.
        def batches() -> list[list[int]]:
            perm = list(range(len(texts)))
            rng.shuffle(perm)
            pool = batch_size * 50
            out: list[list[int]] = []
            for start in range(0, len(perm), pool):
                chunk = sorted(perm[start : start + pool], key=lambda i: int(states[i].shape[0]))
                out.extend(chunk[k : k + batch_size] for k in range(0, len(chunk), batch_size))
            rng.shuffle(out)
            return out

        steps_per_epoch = math.ceil(len(texts) / batch_size)
        total = steps_per_epoch * epochs
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: min(1.0, (step + 1) / max(1, total // 10)) * max(0.0, (total - step) / total),
        )
        # Rare labels (threat, sexual) would drown in negatives; weight positives by prevalence.
        pos = (y * known).sum(0)
        neg = ((1 - y) * known).sum(0)
        pos_weight = (neg / pos.clamp(min=1)).clamp(min=1.0, max=float(config.get("max_pos_weight", 4.0)))
        step = 0
        last = time.monotonic()
        for epoch in range(1, epochs + 1):
            model.train()
            running, seen = 0.0, 0
            for idx in batches():
                logits = _top_forward(model, [states[i] for i in idx], frozen)
                loss_each = torch.nn.functional.binary_cross_entropy_with_logits(
                    logits, y[idx], pos_weight=pos_weight, reduction="none"
                )
                mask = known[idx]
                loss = (loss_each * mask).sum() / mask.sum().clamp(min=1)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                scheduler.step()
                step += 1
                running += loss.item() * len(idx)
                seen += len(idx)
                if time.monotonic() - last > 15:
                    last = time.monotonic()
                    progress(f"epoch {epoch}/{epochs} step {step}/{total} loss {running / seen:.4f}")
            progress(f"epoch {epoch}/{epochs} done, loss {running / max(seen, 1):.4f}")
        train_seconds = time.monotonic() - started

    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    metrics = evaluate_model(model, tokenizer, data_dir, max_length=max_length, seed=seed)
    metrics["train_rows"] = len(examples)
    metrics["train_seconds"] = round(train_seconds, 1)
    progress(
        "dev AUC "
        + ", ".join(f"{k} {v:.3f}" for k, v in metrics["dev_auc"].items())
        + f"; int8 max AUC drop {metrics['int8_max_auc_drop']:.4f}"
    )

    state_dict = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    torch.save(
        {"config": _config_dict(out_dir, {**config, "labels": list(LABELS)}), "state_dict": state_dict},
        out_dir / CHECKPOINT_FILE,
    )
    model.config.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / METADATA_FILE).write_text(
        json.dumps(
            {
                "format": "detoxify-checkpoint",
                "base_model": "sentence-transformers/all-MiniLM-L6-v2",
                "labels": list(LABELS),
                "config": dict(config),
                "metrics": metrics,
            },
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    return metrics


def evaluate_model(
    model: Any,
    tokenizer: Any,
    data_dir: Path,
    *,
    max_length: int,
    seed: int = 0,
    thresholds: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """Dev and test AUC (fp32 and int8) and held-out family accuracy, for the build's metrics."""
    dev = load_corpus(data_dir, "dev")
    test = load_corpus(data_dir, "test")
    _, cases = load_templates(data_dir, "test", seed=seed)
    thresholds = thresholds or dict.fromkeys(LABELS, 0.5)
    texts = [prepare(e.text) for e in dev + test] + [prepare(c.text) for c in cases]
    scores = predict(model, tokenizer, texts, max_length=max_length)
    scores_int8 = predict(_quantized(model), tokenizer, texts, max_length=max_length)
    n_dev, n_test = len(dev), len(test)
    dev_labels = [e.labels for e in dev]
    test_labels = [e.labels for e in test]
    dev_auc = label_auc(dev_labels, scores[:n_dev])
    dev_auc_int8 = label_auc(dev_labels, scores_int8[:n_dev])
    families = family_accuracy(cases, scores[n_dev + n_test :], thresholds)
    families_int8 = family_accuracy(cases, scores_int8[n_dev + n_test :], thresholds)
    hateful = [c for c in cases if c.hateful]
    hate_j = LABELS.index("hate")
    hateful_scores = [float(scores[n_dev + n_test + i, hate_j]) for i, c in enumerate(cases) if c.hateful]
    return {
        "dev_auc": dev_auc,
        "dev_auc_int8": dev_auc_int8,
        "int8_max_auc_drop": round(max((dev_auc[k] - dev_auc_int8.get(k, 0.0)) for k in dev_auc), 4),
        "test_auc": label_auc(test_labels, scores[n_dev : n_dev + n_test]),
        "families": families,
        "families_int8": families_int8,
        "hateful_recall": round(
            sum(s >= thresholds["hate"] for s in hateful_scores) / max(1, len(hateful)), 4
        ),
        "thresholds": dict(thresholds),
    }


def iter_families(metrics: Mapping[str, Any]) -> Iterable[tuple[str, Mapping[str, Any]]]:
    """(family, figures) pairs, hateful families first, for printing."""
    fams = metrics.get("families", {})
    return sorted(fams.items(), key=lambda kv: (not kv[1]["hateful"], kv[0]))
