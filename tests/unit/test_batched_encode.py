"""The one batched forward pass: length-sorted batches, truncation, results back in input order."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import torch

from evaluators.batched_encode import encode_batched
from evaluators.embeddings import minilm_path


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_path()))


class CountingLock:
    """A lock that counts how often it was taken, to show the tokenizer call is guarded."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.taken = 0

    def __enter__(self) -> None:
        self.lock.acquire()
        self.taken += 1

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


def test_texts_come_back_in_input_order_from_length_sorted_batches(tokenizer: Any) -> None:
    texts = ["a much longer text than the others here", "hi", "medium length", "", "x y"]
    batches: list[list[str]] = []
    lock = CountingLock()

    def forward(enc: Any, batch: list[str]) -> list[tuple[str, int]]:
        batches.append(batch)
        assert torch.is_inference_mode_enabled()
        assert enc["input_ids"].shape[0] == len(batch)
        return [(t, int(n)) for t, n in zip(batch, enc["attention_mask"].sum(dim=1).tolist(), strict=True)]

    out = encode_batched(texts, tokenizer, forward, batch_size=2, max_length=6, lock=lock)
    assert [t for t, _ in out] == texts
    # Shortest first, two per batch; ties keep input order.
    assert batches == [["", "hi"], ["x y", "medium length"], ["a much longer text than the others here"]]
    assert lock.taken == 3
    assert max(n for _, n in out) == 6  # truncated to max_length tokens, specials included


def test_pairs_cut_the_premise_never_the_claim(tokenizer: Any) -> None:
    claim = "the sky is green"
    pairs = [("word " * 50, claim), ("short premise", claim)]

    def forward(enc: Any, batch: list[tuple[str, str]]) -> list[str]:
        return [tokenizer.decode(ids, skip_special_tokens=True) for ids in enc["input_ids"]]

    out = encode_batched(pairs, tokenizer, forward, batch_size=8, max_length=16, kind="pair")
    assert all(text.endswith(claim) for text in out)
    assert out[1] == f"short premise {claim}"
    # [CLS] premise [SEP] claim [SEP] in 16 tokens: the premise keeps what the claim leaves.
    assert out[0] == "word " * (16 - 3 - len(claim.split())) + claim


def test_words_keep_word_ids_and_an_empty_sentence_passes(tokenizer: Any) -> None:
    sentences = [["Jane", "Doe", "called"], [], ["Hi"]]

    def forward(enc: Any, batch: list[list[str]]) -> list[int]:
        return [len({w for w in enc.word_ids(b) if w is not None}) for b in range(len(batch))]

    out = encode_batched(sentences, tokenizer, forward, batch_size=2, max_length=32, kind="words")
    assert out == [3, 0, 1]


def test_no_items_no_forward_call(tokenizer: Any) -> None:
    def forward(enc: Any, batch: list[str]) -> list[int]:
        raise AssertionError("forward called for an empty list")

    assert encode_batched([], tokenizer, forward, batch_size=4, max_length=8) == []
