"""The abuse classifier's data: carried corpus, templates and their held-out split, evasions, metrics."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
import yaml

from evaluators.abuse_data import LABELS, UNKNOWN, FamilyCase, evade, load_corpus, load_templates
from evaluators.abuse_training import family_accuracy, label_auc
from evaluators.build import DATA_DIR


def test_corpus_splits_are_disjoint_and_labels_valid() -> None:
    splits = {name: load_corpus(DATA_DIR, name) for name in ("train", "dev", "test")}
    assert all(splits.values())
    texts = {name: {e.text for e in rows} for name, rows in splits.items()}
    assert not texts["train"] & texts["test"]
    assert not texts["train"] & texts["dev"]
    for rows in splits.values():
        for e in rows:
            assert len(e.labels) == len(LABELS)
            assert set(e.labels) <= {UNKNOWN, 0, 1}
            # "toxicity" is any of the others: a known positive elsewhere implies it.
            if any(v == 1 for v in e.labels[1:]):
                assert e.labels[0] == 1, e


def test_test_templates_are_never_training_templates() -> None:
    train, _ = load_templates(DATA_DIR, "train")
    _, cases = load_templates(DATA_DIR, "test")
    train_texts = {e.text for e in train}
    assert cases
    assert not train_texts & {c.text for c in cases}
    families = {c.family for c in cases}
    assert {"counter_speech", "negated_hate", "reclaimed", "profanity_nontargeted", "evasion"} <= families
    assert any(c.hateful for c in cases) and any(not c.hateful for c in cases)


def test_every_family_has_train_and_test_templates() -> None:
    doc = yaml.safe_load((DATA_DIR / "abuse" / "templates.yaml").read_text())
    for name, spec in doc["families"].items():
        assert spec["train"] and spec["test"], name
        assert not set(spec["train"]) & set(spec["test"]), name
        assert set(spec["expect"]) <= set(LABELS), name


def test_unknown_label_in_templates_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "abuse").mkdir()
    (tmp_path / "abuse" / "templates.yaml").write_text(
        "slots: {}\nfamilies:\n  f:\n    hateful: false\n    labels: {spam: 1}\n    expect: {}\n"
        "    train: [a]\n    test: [b]\nevasion: {hateful: true, from: [], labels: {}, expect: {}}\n"
    )
    with pytest.raises(ValueError, match="unknown label"):
        load_templates(tmp_path, "train")


def test_evade_changes_one_word_and_is_seeded() -> None:
    text = "Immigrants are disgusting."
    a = evade(text, random.Random(1))
    b = evade(text, random.Random(1))
    assert a == b
    outs = {evade(text, random.Random(seed)) for seed in range(40)}
    assert len(outs) >= 4  # several kinds of evasion
    for out in outs:
        assert out != text
        assert " are " in out  # short function words are never the perturbed word


def test_family_accuracy_counts_every_expected_label() -> None:
    cases = [
        FamilyCase("x", "threat_group", True, {"hate": 1, "threat": 1}),
        FamilyCase("y", "threat_group", True, {"hate": 1, "threat": 1}),
        FamilyCase("z", "neutral", False, {"hate": 0}),
    ]
    h, t = LABELS.index("hate"), LABELS.index("threat")
    scores = torch.zeros(3, len(LABELS))
    scores[0, h], scores[0, t] = 0.9, 0.9  # both right
    scores[1, h], scores[1, t] = 0.9, 0.1  # threat missed: wrong
    scores[2, h] = 0.49  # below 0.5: right
    acc = family_accuracy(cases, scores, dict.fromkeys(LABELS, 0.5))
    assert acc["threat_group"]["accuracy"] == 0.5
    assert acc["neutral"]["accuracy"] == 1.0


def test_label_auc_skips_unknown_rows() -> None:
    j = LABELS.index("insult")
    labels = [[UNKNOWN] * len(LABELS) for _ in range(4)]
    labels[0][j], labels[1][j], labels[2][j] = 1, 0, 1
    scores = torch.zeros(4, len(LABELS))
    scores[0, j], scores[1, j], scores[2, j], scores[3, j] = 0.8, 0.2, 0.7, 0.99
    auc = label_auc(labels, scores)
    assert auc == {"insult": 1.0}  # row 3 (unknown) would have broken the ranking
