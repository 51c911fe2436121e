"""ONNX Runtime for the MiniLM forwards: the real abuse classifier, PII tagger encoder and
sentence encoder against fp32 torch (probabilities within 1e-4, AUC within 0.005 on a fixed
labelled sample), the export cache, the setting that turns it off, and the thread count.

The built-model tests skip, saying so, when ``assay models build`` has not run (make test runs it).
"""

from __future__ import annotations

import csv
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from sklearn.metrics import roc_auc_score

from evaluators import models, onnx_models
from evaluators.batched_encode import encode_batched
from evaluators.checks.base import CheckInput
from evaluators.checks.pii_engine import load_ner_tagger
from evaluators.checks.pii_recognizers import split_words, word_probabilities
from evaluators.checks.toxicity import ToxicityCheck, ToxicityConfig
from evaluators.ner_minilm import CONFIG_FILE
from evaluators.normalize import normalize
from evaluators.onnx_models import MODEL_FILE, OnnxModel, accelerate, cached_export
from evaluators.settings import PROJECT_ROOT, evaluator_settings

SAMPLE = 300
LABELS = ("toxicity", "hate", "insult", "threat", "sexual", "profanity")


@pytest.fixture
def onnx_setting(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Sets ``ASSAY_ONNX`` for one test, each time with a fresh model registry of its own.

    The process's registry is swapped, not cleared: a session-wide app (``api_client``) keeps
    using what it loaded, and its model-load metrics must survive this test.
    """

    def use(on: bool) -> None:
        monkeypatch.setattr(models, "_REGISTRY", models.ModelRegistry())
        # Every batch size on ONNX Runtime, so the comparisons cover full micro-batches too.
        settings = evaluator_settings().model_copy(update={"onnx": on, "onnx_max_batch": 0})
        stack.append(evaluator_settings.override(settings))
        stack[-1].__enter__()

    stack: list[Any] = []
    yield use
    for ctx in reversed(stack):
        ctx.__exit__(None, None, None)


def built(name: str, marker: str) -> Path:
    folder = evaluator_settings().model_dir / name
    if not (folder / marker).is_file():
        pytest.skip(f"{name} is not built in {folder.parent}: run `assay models build` (make test does)")
    return folder.resolve()


def labelled_sample() -> tuple[list[str], dict[str, list[int]]]:
    """A seeded sample of the abuse corpus's test split, with each label where it is annotated."""
    with (PROJECT_ROOT / "data" / "abuse" / "corpus.csv").open(encoding="utf-8", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "test"]
    rows = random.Random(13).sample(rows, SAMPLE)
    return [r["text"] for r in rows], {label: [int(r[label]) for r in rows] for label in LABELS}


def toxicity_check() -> ToxicityCheck:
    folder = built("abuse-minilm", "model.ckpt")
    check = ToxicityCheck(
        ToxicityConfig.model_validate(
            {"check": "toxicity", "profanity": None, "detoxify": {"checkpoint": str(folder)}}
        )
    )
    check.load()
    return check


def torch_probabilities(check: ToxicityCheck, texts: list[str]) -> torch.Tensor:
    clf = check._classifier
    assert clf is not None

    def forward(enc: Any, _batch: list[str]) -> list[torch.Tensor]:
        return list(torch.sigmoid(clf.detox.model(**enc)[0]))

    return torch.stack(
        encode_batched(texts, clf.detox.tokenizer, forward, batch_size=32, max_length=256, device="cpu")
    )


def test_abuse_classifier_on_onnx_scores_as_fp32_torch(onnx_setting: Any) -> None:
    onnx_setting(True)
    check = toxicity_check()
    clf = check._classifier
    assert clf is not None and isinstance(clf.model, OnnxModel), "the classifier did not switch to ONNX"
    texts, labels = labelled_sample()
    folded = [normalize(t).folded for t in texts]
    fast = torch.tensor(check._classify(folded))
    exact = torch_probabilities(check, folded)
    assert float((fast - exact).abs().max()) < 1e-4
    classes = clf.detox.class_names
    compared = 0
    for label in LABELS:
        known = [i for i, y in enumerate(labels[label]) if y >= 0]
        ys = [labels[label][i] for i in known]
        if len(set(ys)) < 2:
            continue
        col = classes.index(label)
        auc_fast = roc_auc_score(ys, fast[known, col].tolist())
        auc_exact = roc_auc_score(ys, exact[known, col].tolist())
        assert abs(auc_fast - auc_exact) < 0.005, (label, auc_fast, auc_exact)
        compared += 1
    assert compared >= 3  # the sample annotates toxicity, hate, insult at least
    # Findings through the check carry the same scores (single texts as in a batch).
    one = check.evaluate([CheckInput(normalize(texts[0]))])[0]
    assert {f.label: round(f.score, 4) for f in one} == {
        label: round(float(exact[0, classes.index(label)]), 4) for label in check.labels
    }


def test_onnx_off_keeps_torch(onnx_setting: Any) -> None:
    onnx_setting(False)
    check = toxicity_check()
    assert check._classifier is not None
    assert check._classifier.model is check._classifier.detox.model
    from evaluators.onnx_models import sentence_encoder

    assert not isinstance(sentence_encoder("cpu").model, OnnxModel)


def test_tagger_encoder_on_onnx_gives_the_same_probabilities(onnx_setting: Any) -> None:
    onnx_setting(True)
    folder = built("ner-minilm", CONFIG_FILE)
    tagger = load_ner_tagger(folder)
    encoder = tagger.encoder
    assert isinstance(encoder.model, OnnxModel), "the tagger's encoder did not switch to ONNX"
    sentences = [
        [w for w, _, _ in split_words(t)]
        for t in (
            "Hi Jane Doe, thanks for reaching out about order 1042 from Lisbon.",
            "meet @carlos at the Denver office of Acme Corp tomorrow #team",
            "",
            "Amira Khan and Tom Lee flew to Osaka with Olga Ivanova last week.",
        )
    ]
    fast = word_probabilities(tagger)(sentences)
    encoder.model = encoder.model.torch_model
    exact = word_probabilities(tagger)(sentences)
    for a, b in zip(fast, exact, strict=True):
        assert a.shape == b.shape
        if a.numel():
            assert float((a - b).abs().max()) < 1e-4
            assert torch.equal(a.argmax(dim=1), b.argmax(dim=1))


def test_sentence_encoder_on_onnx_gives_the_same_vectors(onnx_setting: Any) -> None:
    onnx_setting(True)
    from evaluators.embeddings import sentence_encoder as torch_encoder
    from evaluators.onnx_models import sentence_encoder

    fast = sentence_encoder("cpu")
    assert isinstance(fast.model, OnnxModel)
    texts, _ = labelled_sample()
    a, b = fast.encode(texts[:64]), torch_encoder("cpu").encode(texts[:64])
    assert float((a - b).abs().max()) < 1e-4
    assert torch.allclose(a.norm(dim=1), torch.ones(64), atol=1e-5)


@pytest.fixture
def tiny_bert(tmp_path: Path) -> Iterator[Any]:
    """A small random BERT (the MiniLM tokenizer's vocabulary) and a cache folder of its own."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    model = BertModel(
        BertConfig(
            vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
        )
    ).eval()
    settings = evaluator_settings().model_copy(update={"cache_dir": tmp_path, "onnx": True})
    with evaluator_settings.override(settings):
        yield model


def test_export_is_cached_by_weights_and_written_whole(tiny_bert: Any, tmp_path: Path) -> None:
    path = cached_export(tiny_bert, "hidden_states")
    assert path.name == MODEL_FILE and path.parent.parent == tmp_path / "onnx"
    stamp = path.stat().st_mtime_ns
    assert cached_export(tiny_bert, "hidden_states") == path and path.stat().st_mtime_ns == stamp
    # No temporary folder is left beside the entry.
    assert [p.name for p in (tmp_path / "onnx").iterdir()] == [path.parent.name]
    # Other outputs, or other weights, are another entry.
    assert cached_export(tiny_bert, "last_hidden_state") != path
    with torch.no_grad():
        tiny_bert.encoder.layer[0].output.dense.bias.add_(0.01)
    assert cached_export(tiny_bert, "hidden_states").parent != path.parent


def test_stand_in_returns_what_the_model_returns(tiny_bert: Any) -> None:
    fast = accelerate(tiny_bert, "hidden_states")
    assert isinstance(fast, OnnxModel) and fast.torch_model is tiny_bert
    ids = torch.tensor([[101, 2023, 2003, 102, 0], [101, 7592, 2088, 2003, 102]])
    mask = (ids != 0).long()
    with torch.inference_mode():
        ref = tiny_bert(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    got = fast(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    assert len(got.hidden_states) == len(ref.hidden_states) == 3
    for a, b in zip(got.hidden_states, ref.hidden_states, strict=True):
        assert float((a - b).abs().max()) < 1e-4
    assert got.last_hidden_state is got.hidden_states[-1]
    # Intra-op threads follow torch's (ASSAY_TORCH_THREADS is applied to torch first).
    assert fast.session.get_session_options().intra_op_num_threads == torch.get_num_threads()
    # Accelerating twice is a no-op, not a second export.
    assert accelerate(fast, "hidden_states") is fast


def test_batches_over_the_limit_run_on_torch(tiny_bert: Any) -> None:
    fast = accelerate(tiny_bert, "last_hidden_state")
    assert isinstance(fast, OnnxModel) and fast.max_rows == 8  # the setting's default
    fast.max_rows = 2
    calls: list[int] = []
    session = fast.session

    class Spy:
        def run(self, names: Any, feeds: dict[str, Any]) -> Any:
            calls.append(len(feeds["input_ids"]))
            return session.run(names, feeds)

    fast.session = Spy()
    ids = torch.tensor([[101, 2023, 2003, 102]] * 3)
    with torch.inference_mode():
        ref = tiny_bert(input_ids=ids).last_hidden_state
        assert torch.equal(fast(input_ids=ids).last_hidden_state, ref) and not calls
        assert float((fast(input_ids=ids[:2]).last_hidden_state - ref[:2]).abs().max()) < 1e-4
    assert calls == [2]


def test_a_graph_that_differs_from_torch_is_not_used(tiny_bert: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(onnx_models, "MAX_ABS_DIFF", -1.0)
    assert accelerate(tiny_bert, "last_hidden_state") is tiny_bert


def test_nothing_runs_off_cpu_or_with_the_setting_off(tiny_bert: Any, tmp_path: Path) -> None:
    assert accelerate(tiny_bert, "logits", device="cuda") is tiny_bert
    with evaluator_settings.override(evaluator_settings().model_copy(update={"onnx": False})):
        assert accelerate(tiny_bert, "last_hidden_state") is tiny_bert
    assert not (tmp_path / "onnx").exists()
