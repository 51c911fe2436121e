"""The toxicity check: profanity tier on the real alt-profanity-check model,
config validation, and tiering with a tiny real Detoxify-format checkpoint."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import ValidationError

from evaluators import models
from evaluators.checks.base import CheckInput
from evaluators.checks.toxicity import (
    PROFANITY_ENGINE,
    ToxicityCheck,
    ToxicityConfig,
    abuse_default_labels,
    jigsaw_default_labels,
)
from evaluators.findings import Action, Finding
from evaluators.normalize import normalize
from evaluators.training import JIGSAW_CLASSES, train_toxicity


def make(**fields: Any) -> ToxicityConfig:
    return ToxicityConfig.model_validate({"check": "toxicity", **fields})


def run(check: ToxicityCheck, texts: list[str]) -> list[list[Finding]]:
    return check.evaluate([CheckInput(normalize(t)) for t in texts])


@pytest.fixture(scope="module")
def profanity() -> ToxicityCheck:
    check = ToxicityCheck(make())
    check.load()
    return check


def profanity_score(check: ToxicityCheck, text: str) -> Finding:
    (finding,) = run(check, [text])[0]
    return finding


@pytest.mark.parametrize(
    "text",
    [
        "You are a stupid idiot and I will kill you",
        "shut up you moron",
        "go to hell",
        "I will kill you",
        "you are a fucking idiot",
    ],
)
def test_abusive_text_triggers(profanity: ToxicityCheck, text: str) -> None:
    f = profanity_score(profanity, text)
    assert f.triggered, f
    assert f.score >= 0.8
    assert (f.check, f.label, f.engine, f.action, f.threshold) == (
        "toxicity",
        "toxicity",
        PROFANITY_ENGINE,
        Action.FLAG,
        0.8,
    )
    assert f.span is None
    assert f.effective_action is Action.FLAG


@pytest.mark.parametrize(
    "text",
    [
        "You are a wonderful colleague",
        "Thanks for reviewing my pull request",
        "The meeting is at 3pm in room 4",
        "",
    ],
)
def test_benign_text_does_not_trigger(profanity: ToxicityCheck, text: str) -> None:
    f = profanity_score(profanity, text)
    assert not f.triggered
    assert f.score < 0.3
    assert f.effective_action is Action.ALLOW


@pytest.mark.parametrize(
    ("plain", "evasive"),
    [
        ("you are an idiot", "you are an 1d10t"),
        ("you are stupid", "you are s7up1d"),
        ("you are an asshole", "you are an a$$hole"),
        ("fuck you", "f\u200bu\u200bc\u200bk you"),
        ("fuck you", "ｆｕｃｋ you"),
    ],
)
def test_evasion_scores_like_plain_form(profanity: ToxicityCheck, plain: str, evasive: str) -> None:
    from profanity_check import predict_prob

    base = profanity_score(profanity, plain)
    dodged = profanity_score(profanity, evasive)
    assert dodged.triggered
    assert dodged.score == pytest.approx(base.score, abs=0.05)
    # Without the folded view the same model misses it, so the check's normalisation is what helps.
    if evasive != "ｆｕｃｋ you":
        assert float(predict_prob([evasive])[0]) < base.threshold


def test_batch_keeps_order_and_counts(profanity: ToxicityCheck) -> None:
    texts = ["You are a wonderful colleague", "you are an 1d10t", "nice day", "go to hell"]
    results = run(profanity, texts)
    assert len(results) == 4
    assert [r[0].triggered for r in results] == [False, True, False, True]
    assert profanity.evaluate([]) == []


def test_profanity_threshold_and_action_come_from_config() -> None:
    # "I hope you die" scores about 0.86 with the shipped model.
    strict = ToxicityCheck(make(profanity={"threshold": 0.5, "action": "block"}))
    lenient = ToxicityCheck(make(profanity={"threshold": 0.99}))
    (f_strict,) = run(strict, ["I hope you die"])[0]
    (f_lenient,) = run(lenient, ["I hope you die"])[0]
    assert f_strict.triggered
    assert f_strict.action is Action.BLOCK
    assert f_strict.threshold == 0.5
    assert not f_lenient.triggered
    assert f_lenient.score == pytest.approx(f_strict.score)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"profanity": None}, "at least one tier"),
        ({"profanity": {"enabled": False}}, "at least one tier"),
        ({"profanity": {"action": "redact"}}, "redact is not valid for toxicity"),
        (
            {
                "detoxify": {"checkpoint": "x"},
                "labels": {"threat": {"threshold": 0.5, "action": "redact"}},
            },
            "labels threat: redact is not valid",
        ),
        ({"escalate_above": 0.5}, "escalate_above needs a detoxify tier"),
        (
            {"profanity": None, "detoxify": {"checkpoint": "x"}, "escalate_above": 0.5},
            "escalate_above needs the profanity tier",
        ),
        ({"detoxify": {"checkpoint": "x"}, "labels": {}}, "at least one label"),
        ({"profanity": {"threshold": 1.5}}, "less than or equal to 1"),
        ({"labels": {"spam": {"threshold": 0.5}}}, "toxicity"),
        ({"detoxify": {"checkpoint": "x", "batch_size": 0}}, "greater than or equal to 1"),
        ({"detoxify": {"checkpoint": ""}}, "at least 1 character"),
        ({"detoxify": {"checkpoint": "x", "gpu": True}}, "Extra inputs are not permitted"),
        ({"threshold": 0.5}, "Extra inputs are not permitted"),
    ],
)
def test_config_validation(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        make(**fields)


def test_config_defaults_and_frozen() -> None:
    cfg = make()
    assert cfg.profanity is not None
    assert cfg.profanity.threshold == 0.8
    assert cfg.detoxify is None
    assert cfg.escalate_above is None
    # Null labels: the checkpoint's own label set decides the built-in rules at load time.
    assert cfg.labels is None
    abuse = abuse_default_labels()
    assert abuse["hate"].action is Action.BLOCK and abuse["threat"].action is Action.BLOCK
    assert abuse["insult"].action is Action.FLAG
    assert abuse["profanity"].action is Action.ALLOW
    assert set(abuse) == {"toxicity", "hate", "insult", "threat", "sexual", "profanity"}
    assert jigsaw_default_labels()["severe_toxicity"].action is Action.BLOCK
    with pytest.raises(ValidationError):
        cfg.escalate_above = 0.3
    with pytest.raises(ValidationError):
        make(check="pii")


# --- both tiers, with a tiny real checkpoint -------------------------------------------


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("tox2")
    data = root / "train.csv"
    with data.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["comment_text", *JIGSAW_CLASSES])
        for i in range(24):
            toxic = i % 2
            text = "you are a worthless idiot" if toxic else "thanks for the careful review"
            writer.writerow([f"{text} {i}", toxic, 0, 0, 0, toxic, 0])
    out = root / "tiny-tier2"
    train_toxicity(data, out, epochs=1, batch_size=8, max_length=16, val_fraction=0.0)
    yield out
    models.registry().clear()


def engines_per_text(results: list[list[Finding]]) -> list[set[str]]:
    return [{f.engine for f in findings} for findings in results]


def test_escalate_above_skips_second_tier_for_clean_text(tiny_checkpoint: Path) -> None:
    texts = ["You are a wonderful colleague", "you are an 1d10t"]
    tier2 = "detoxify:tiny-tier2"
    escalating = ToxicityCheck(make(detoxify={"checkpoint": str(tiny_checkpoint)}, escalate_above=0.5))
    assert engines_per_text(run(escalating, texts)) == [
        {PROFANITY_ENGINE},
        {PROFANITY_ENGINE, tier2},
    ]

    both = ToxicityCheck(make(detoxify={"checkpoint": str(tiny_checkpoint)}))
    results = run(both, texts)
    assert engines_per_text(results) == [{PROFANITY_ENGINE, tier2}] * 2
    # One profanity finding plus one per configured label.
    assert [len(r) for r in results] == [7, 7]


def test_only_configured_labels_are_reported(tiny_checkpoint: Path) -> None:
    check = ToxicityCheck(
        make(
            profanity=None,
            detoxify={"checkpoint": str(tiny_checkpoint)},
            labels={"threat": {"threshold": 0.0, "action": "block"}, "insult": {"threshold": 1.0}},
        )
    )
    (findings,) = run(check, ["I will find you"])
    assert [(f.label, f.triggered, f.action) for f in findings] == [
        ("threat", True, Action.BLOCK),  # threshold 0: any score triggers
        ("insult", False, Action.FLAG),
    ]


def test_batched_scores_equal_single_scores(tiny_checkpoint: Path) -> None:
    texts = [
        "a rather long and entirely polite remark about the weather today",
        "idiot",
        "thanks",
        "you are a worthless idiot and everyone knows it",
        "ok",
    ]
    check = ToxicityCheck(
        make(profanity=None, detoxify={"checkpoint": str(tiny_checkpoint), "batch_size": 2})
    )
    batched = run(check, texts)
    for text, findings in zip(texts, batched, strict=True):
        (single,) = run(check, [text])
        assert [f.score for f in findings] == pytest.approx([f.score for f in single], abs=1e-5)
    # The tiny model did learn: the toxic training phrase outscores the polite one.
    assert batched[3][0].score > batched[0][0].score


def test_int8_quantization_on_cpu(tiny_checkpoint: Path) -> None:
    fp32 = ToxicityCheck(make(profanity=None, detoxify={"checkpoint": str(tiny_checkpoint), "device": "cpu"}))
    int8 = ToxicityCheck(
        make(
            profanity=None,
            detoxify={"checkpoint": str(tiny_checkpoint), "device": "cpu", "quantize_int8": True},
        )
    )
    texts = ["you are a worthless idiot", "thanks for the careful review"]
    a, b = run(fp32, texts), run(int8, texts)
    assert int8._classifier is not None
    linear_types = {
        type(m).__module__ for m in int8._classifier.detox.model.modules() if "Linear" in type(m).__name__
    }
    assert any("quantized" in t for t in linear_types)
    assert not any(isinstance(m, torch.nn.Linear) for m in int8._classifier.detox.model.modules())
    for fa, fb in zip(a, b, strict=True):
        assert [f.score for f in fb] == pytest.approx([f.score for f in fa], abs=0.05)


def test_profanity_tier_scores_as_alt_profanity_check(profanity: ToxicityCheck) -> None:
    # The tier computes the package's calibrated SVM average itself (sklearn's predict_proba
    # costs ~9 ms per call, whatever the batch): it must give the package's own probabilities.
    import numpy as np
    from profanity_check import predict_prob

    from evaluators.checks.toxicity import _load_profanity

    texts = [
        "You are a stupid idiot and I will kill you",
        "shut up you moron",
        "Thanks for reviewing my pull request",
        "sh1t happens",
        "",
        "Please send the invoice 1042 to billing@example.org before the end of the month.",
    ]
    fast = _load_profanity()
    assert fast is not predict_prob, "the package's model changed shape: the fast path is off"
    assert np.allclose(fast(texts), predict_prob(texts), rtol=0, atol=1e-12)
    assert np.allclose(fast(texts[:1]), predict_prob(texts[:1]), rtol=0, atol=1e-12)
    scores = [f.score for (f,) in run(profanity, texts)]
    assert np.allclose(scores, predict_prob([normalize(t).folded for t in texts]), rtol=0, atol=1e-12)
