"""The NER trainer's cached-bottom features are the ones the tagger computes at inference.

The trainer runs MiniLM's frozen bottom layers once and trains the top layers and the head
on a padded batch; the tagger runs the whole encoder per sentence. If the two disagreed
(another hidden-state mix, an off-by-one window, padding leaking into a neighbour), the
build would train a head for features it never sees. Real MiniLM, no build needed.
"""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")

from evaluators import ner_minilm as nm  # noqa: E402
from evaluators import ner_training as nt  # noqa: E402

SENTENCES = [
    ["Jane", "Doe", "flew", "to", "Lisbon", "with", "#Arsenal", "fans"],
    ["ok"],
    ["@bob", "said", "Amira", "Khan", "lives", "in", "New", "York", "City", ",", "USA", "!"],
]


@pytest.fixture(scope="module")
def minilm() -> tuple[Any, Any]:
    model, tokenizer = nm._load_minilm()
    return model.eval(), tokenizer


@pytest.mark.parametrize("frozen", [4, 5])
def test_training_features_match_inference(minilm: tuple[Any, Any], frozen: int) -> None:
    model, tokenizer = minilm
    cached = nt._cache_frozen(model, tokenizer, SENTENCES, frozen)
    with torch.inference_mode():
        batch = nt._top_features(model, cached, frozen)
    per_sentence = nm.WordEncoder(model=model, tokenizer=tokenizer).encode(SENTENCES)
    assert batch.shape == (
        len(SENTENCES),
        max(map(len, SENTENCES)),
        3 * (model.config.hidden_size + nm.N_SHAPE),
    )
    for row, (words, feats) in enumerate(zip(SENTENCES, per_sentence, strict=True)):
        expected = nm._window(feats)
        # fp16 caching of the bottom's states costs a little precision, nothing more.
        torch.testing.assert_close(batch[row, : len(words)], expected, atol=2e-2, rtol=2e-2)
        # Past the sentence's end the batch is padding: its own features are all zeros (the
        # shape bias included), exactly what _window puts past a sentence's edge.
        width = model.config.hidden_size + nm.N_SHAPE
        assert not batch[row, len(words) :, width : 2 * width].any()


def test_top_features_carry_gradients_to_trainable_layers(minilm: tuple[Any, Any]) -> None:
    model, tokenizer = minilm
    cached = nt._cache_frozen(model, tokenizer, SENTENCES[:1], 5)
    weight = model.encoder.layer[5].output.dense.weight
    frozen_weight = model.encoder.layer[4].output.dense.weight
    model.zero_grad(set_to_none=True)
    nt._top_features(model, cached, 5).sum().backward()
    assert weight.grad is not None and weight.grad.abs().sum() > 0
    # The cached bottom is a constant: nothing flows back into it.
    assert frozen_weight.grad is None
    model.zero_grad(set_to_none=True)
