"""One batched forward pass over texts, text pairs or pre-split words, results in input order.

Every transformer in the package (the sentence encoder, the abuse and NLI classifiers, the
PII tagger and their trainers) scores a list the same way: sort it by length so each batch
pads little, tokenise a batch, run the model, and put each row back where its input stood.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Literal, TypeVar, cast

T = TypeVar("T")
R = TypeVar("R")

Kind = Literal["text", "pair", "words"]


def _length(item: Any, kind: Kind) -> int:
    if kind == "text":
        return len(item)
    if kind == "pair":
        return len(item[0]) + len(item[1])
    return sum(len(w) for w in item)


def _tokenize(tokenizer: Any, batch: list[Any], kind: Kind, max_length: int) -> Any:
    common: dict[str, Any] = {"max_length": max_length, "padding": True, "return_tensors": "pt"}
    if kind == "pair":
        # Cut the premise, never the claim.
        return tokenizer([a for a, _ in batch], [b for _, b in batch], truncation="only_first", **common)
    if kind == "words":
        # A tokenizer rejects an empty word list; one empty word stands in for it.
        words = [list(s) or [""] for s in batch]
        return tokenizer(words, is_split_into_words=True, truncation=True, **common)
    return tokenizer(batch, truncation=True, **common)


def encode_batched(
    items: Sequence[T],
    tokenizer: Any,
    forward: Callable[[Any, list[T]], Sequence[R]],
    *,
    batch_size: int,
    max_length: int,
    kind: Kind = "text",
    device: str | None = None,
    lock: AbstractContextManager[Any] | None = None,
) -> list[R]:
    """``forward(encoding, batch)``'s rows for ``items``, in input order.

    ``items`` are texts, ``(premise, hypothesis)`` pairs or word lists, as ``kind`` says.
    Batches of ``batch_size`` are taken in order of character length (the pair's sum, the
    words' sum), tokenised with padding and truncation to ``max_length`` tokens, moved to
    ``device`` when one is given, and passed to ``forward`` with the batch's own items; it
    returns one result per item, in the batch's order. ``lock`` guards the tokenizer call
    (fast tokenizers raise "Already borrowed" when threads share one). Runs under
    ``torch.inference_mode``.
    """
    import torch

    # Similar lengths in one batch means less padding to compute.
    order = sorted(range(len(items)), key=lambda i: _length(items[i], kind))
    out: list[R | None] = [None] * len(items)
    guard = lock if lock is not None else nullcontext()
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = [items[i] for i in idx]
            with guard:
                enc = _tokenize(tokenizer, batch, kind, max_length)
            if device is not None:
                enc = enc.to(device)
            rows = forward(enc, batch)
            for i, row in zip(idx, rows, strict=True):
                out[i] = row
    return cast(list[R], out)
