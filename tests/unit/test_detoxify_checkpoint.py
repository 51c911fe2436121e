"""Detoxify-format checkpoints from ``train_toxicity``, loaded by Detoxify and the check.

A tiny checkpoint is trained from the bundled MiniLM on a 40-row CSV (one
epoch, short sequences), so everything here runs real code on a real model.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import torch
from detoxify import Detoxify

from evaluators import models
from evaluators.checks.base import CheckInput
from evaluators.checks.toxicity import ToxicityCheck, ToxicityConfig
from evaluators.errors import ModelMissingError
from evaluators.normalize import normalize
from evaluators.settings import evaluator_settings
from evaluators.training import (
    JIGSAW_CLASSES,
    TrainProgress,
    TrainReport,
    default_base_model,
    read_jigsaw_csv,
    train_toxicity,
)

Trained = tuple[Path, Path, TrainReport]
DETOXIFY_LABELS = ["toxicity", "severe_toxicity", "obscene", "threat", "insult", "identity_attack"]

TOXIC = [
    "you are a stupid idiot",
    "shut up you worthless moron",
    "I will find you and hurt you",
    "go to hell you pathetic loser",
    "what a dumb useless fool you are",
]
CLEAN = [
    "thanks for fixing the citation",
    "the meeting moved to thursday",
    "I added a source for the claim",
    "nice work on the history section",
    "please see the talk page for details",
]


def write_csv(path: Path, rows: int = 40) -> Path:
    """Jigsaw-format CSV: half toxic (toxic, insult, some threat), half clean, one extra column."""
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "comment_text", *JIGSAW_CLASSES, "extra"])
        for i in range(rows):
            if i % 2:
                text = TOXIC[i // 2 % len(TOXIC)]
                labels = [1, 0, 0, int("hurt" in text), 1, 0]
            else:
                text = CLEAN[i // 2 % len(CLEAN)]
                labels = [0] * 6
            writer.writerow([f"r{i}", f"{text} {i}", *labels, "ignored"])
    return path


def tiny_train(data: Path, out: Path, **kwargs: Any) -> TrainReport:
    opts: dict[str, Any] = {"epochs": 1, "batch_size": 8, "max_length": 16, "seed": 0}
    opts.update(kwargs)
    return train_toxicity(data, out, **opts)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trained]:
    root = tmp_path_factory.mktemp("tox")
    data = write_csv(root / "train.csv")
    out = root / "models" / "tiny-tox"
    report = tiny_train(data, out, val_fraction=0.25)
    # The tiny models load into a registry of this module's own (swapped, not cleared: a
    # session-wide app keeps its models and their load metrics).
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(models, "_REGISTRY", models.ModelRegistry())
        yield data, out, report


def _check(checkpoint: str, **extra: object) -> ToxicityCheck:
    cfg = ToxicityConfig.model_validate(
        {"check": "toxicity", "profanity": None, "detoxify": {"checkpoint": checkpoint, **extra}}
    )
    return ToxicityCheck(cfg)


def test_training_writes_detoxify_folder_and_metadata(trained: Trained) -> None:
    data, out, report = trained
    assert {"model.ckpt", "config.json", "tokenizer_config.json", "assay-model.json"} <= {
        p.name for p in out.iterdir()
    }
    assert (out / "tokenizer.json").is_file() or (out / "vocab.txt").is_file()
    # Written atomically: no temp or backup siblings left behind.
    assert [p.name for p in out.parent.iterdir()] == ["tiny-tox"]

    meta = json.loads((out / "assay-model.json").read_text())
    assert meta["base_model"]["name"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert meta["data"]["sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
    assert meta["data"]["rows_in_file"] == meta["data"]["rows_used"] == 40
    assert meta["train_rows"] + meta["val_rows"] == 40
    assert meta["val_rows"] == report.val_rows == 10
    assert meta["hyperparameters"]["epochs"] == 1
    assert meta["hyperparameters"]["seed"] == 0
    assert meta["labels"] == DETOXIFY_LABELS
    datetime.fromisoformat(meta["created"])
    metrics = meta["metrics"]
    assert metrics["val_loss"] > 0
    # AUC only where the validation split holds both classes: never severe/identity here.
    assert {"toxicity", "insult"} <= set(metrics["val_auc"]) <= {"toxicity", "insult", "threat"}
    assert all(0.0 <= v <= 1.0 for v in metrics["val_auc"].values())

    ckpt = torch.load(out / "model.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["config"]["dataset"]["args"]["classes"] == list(JIGSAW_CLASSES)
    assert ckpt["config"]["arch"]["args"]["model_type"] == str(out.resolve())
    assert ckpt["config"]["arch"]["args"]["num_classes"] == 6
    assert ckpt["state_dict"]["classifier.weight"].shape == (6, 384)


def test_loads_through_detoxify(trained: Trained) -> None:
    _, out, _ = trained
    detox = Detoxify(checkpoint=str(out / "model.ckpt"), huggingface_config_path=str(out))
    assert detox.class_names == DETOXIFY_LABELS
    scores = detox.predict(["you are a stupid idiot", "thanks for the fix"])
    assert set(scores) == set(DETOXIFY_LABELS)
    for values in scores.values():
        assert len(values) == 2
        assert all(0.0 <= v <= 1.0 for v in values)


def test_check_matches_detoxify_predict(trained: Trained) -> None:
    _, out, _ = trained
    texts = ["you are a stupid idiot", "thanks for the fix", "a much longer clean sentence " * 3]
    expected = Detoxify(checkpoint=str(out / "model.ckpt"), huggingface_config_path=str(out)).predict(texts)
    check = _check(str(out), batch_size=2)
    results = check.evaluate([CheckInput(normalize(t)) for t in texts])
    assert check.engines == ["detoxify:tiny-tox"]
    for i, findings in enumerate(results):
        assert [f.label for f in findings] == DETOXIFY_LABELS
        for f in findings:
            assert f.engine == "detoxify:tiny-tox"
            assert f.check == "toxicity"
            assert f.span is None
            # Our length-sorted batches give Detoxify's own scores, in input order.
            assert f.score == pytest.approx(expected[f.label][i], abs=1e-4)


def test_moved_folder_still_loads(trained: Trained, tmp_path: Path) -> None:
    _, out, _ = trained
    moved = tmp_path / "elsewhere" / "moved-tox"
    shutil.copytree(out, moved)
    # Simulate a folder trained on another machine: model_type names a path that is gone.
    ckpt = torch.load(moved / "model.ckpt", map_location="cpu", weights_only=False)
    ckpt["config"]["arch"]["args"]["model_type"] = "/nonexistent/trained/here/tiny-tox"
    torch.save(ckpt, moved / "model.ckpt")

    with pytest.raises(OSError, match="nonexistent"):  # why the loader re-points model_type
        Detoxify(checkpoint=str(moved / "model.ckpt"), huggingface_config_path=str(moved))

    check = _check(str(moved))
    item = [CheckInput(normalize("you are a stupid idiot"))]
    moved_scores = check.evaluate(item)[0]
    original_scores = _check(str(out)).evaluate(item)[0]
    assert check.engines == ["detoxify:moved-tox"]
    assert [f.score for f in moved_scores] == pytest.approx([f.score for f in original_scores], abs=1e-6)


def test_relative_checkpoint_resolves_in_model_dir(
    trained: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, out, _ = trained
    shutil.copytree(out, tmp_path / "local-tox")
    monkeypatch.setenv("ASSAY_MODEL_DIR", str(tmp_path))
    evaluator_settings.reset()
    try:
        check = _check("local-tox")
        check.load()
        assert check.engines == ["detoxify:local-tox"]
    finally:
        monkeypatch.delenv("ASSAY_MODEL_DIR")
        evaluator_settings.reset()


def test_missing_folder_names_field_and_command(tmp_path: Path) -> None:
    with pytest.raises(ModelMissingError, match="train-toxicity") as err:
        _check(str(tmp_path / "no-such-model")).load()
    assert err.value.extra["field"] == "detoxify.checkpoint"
    assert "no-such-model" in err.value.detail


def test_missing_files_are_listed(trained: Trained, tmp_path: Path) -> None:
    _, out, _ = trained
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    (broken / "tokenizer_config.json").unlink()
    (broken / "model.ckpt").unlink()
    with pytest.raises(ModelMissingError) as err:
        _check(str(broken)).load()
    assert err.value.extra["missing"] == ["model.ckpt", "tokenizer_config.json"]
    assert err.value.extra["field"] == "detoxify.checkpoint"


def test_checkpoint_without_config_is_a_clear_error(trained: Trained, tmp_path: Path) -> None:
    _, out, _ = trained
    broken = tmp_path / "no-config"
    shutil.copytree(out, broken)
    ckpt = torch.load(broken / "model.ckpt", map_location="cpu", weights_only=False)
    torch.save({"state_dict": ckpt["state_dict"]}, broken / "model.ckpt")
    with pytest.raises(ModelMissingError, match="'config' and 'state_dict'") as err:
        _check(str(broken)).load()
    assert err.value.extra["field"] == "detoxify.checkpoint"


def test_named_checkpoint_is_not_downloaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty torch hub cache
    with pytest.raises(ModelMissingError, match="cannot be fetched offline") as err:
        _check("original").load()
    assert "train-toxicity" in err.value.detail
    assert err.value.extra["field"] == "detoxify.checkpoint"


def test_missing_label_columns_are_listed(tmp_path: Path) -> None:
    data = tmp_path / "bad.csv"
    data.write_text("comment_text,toxic,severe_toxic,obscene,identity_hate\nhello,0,0,0,0\n")
    with pytest.raises(ValueError, match="missing column\\(s\\) threat, insult"):
        read_jigsaw_csv(data)
    with pytest.raises(ValueError, match="threat, insult"):
        train_toxicity(data, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_training_is_deterministic(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    data = write_csv(tmp_path / "d.csv", rows=16)
    runs = []
    for name in ("a", "b"):
        tiny_train(data, tmp_path / name, seed=1, max_rows=12, val_fraction=0.0)
        runs.append(torch.load(tmp_path / name / "model.ckpt", weights_only=False)["state_dict"])
    a, b = runs
    assert all(torch.equal(a[k], b[k]) for k in a)
    # Not trivially equal: the encoder moved away from the base weights...
    base = load_file(default_base_model() / "model.safetensors")
    key = "encoder.layer.5.output.dense.weight"
    assert not torch.equal(a[f"bert.{key}"], base[key])
    # ...while the frozen token embedding stayed put.
    assert torch.equal(a["bert.embeddings.word_embeddings.weight"], base["embeddings.word_embeddings.weight"])


def test_failed_training_leaves_nothing_behind(tmp_path: Path) -> None:
    data = write_csv(tmp_path / "d.csv", rows=8)
    out = tmp_path / "models" / "tox"

    def boom(event: TrainProgress) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tiny_train(data, out, progress=boom)
    assert list(out.parent.iterdir()) == []
