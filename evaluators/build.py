"""Default models, built from data the project carries, cached by what they are made of.

Each default model is a ``Recipe``: the data files it trains on (under
``data/`` in the project), the modules whose code trains it, and its
hyperparameters. The cache key is a sha256 over all three, so a change to
any of them rebuilds, and nothing else does. Builds land in
``ASSAY_CACHE_DIR/models/NAME/KEY`` (``~/.cache/assay`` by default), which a
second clone, CI and a Docker build stage share; ``ASSAY_MODEL_DIR/NAME`` is
then pointed at the entry, where policies find it by name.

A build is written to a temporary sibling and renamed into place, so a
killed build never leaves a half-written model that a later run would trust.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import inspect
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from evaluators.settings import PROJECT_ROOT, evaluator_settings

DATA_DIR = PROJECT_ROOT / "data"
BUILD_FILE = "build.json"
BUILD_COMMAND = "assay models build"
# Bump to invalidate every cached build at once (a change in the layout of build.json etc.).
CACHE_FORMAT = 1

Progress = Callable[[str], None]


class Trainer(Protocol):
    """``train(out_dir, data_dir, config, progress) -> metrics``: writes the model into ``out_dir``."""

    def __call__(
        self, out_dir: Path, data_dir: Path, config: Mapping[str, Any], progress: Progress
    ) -> Mapping[str, Any]: ...


@dataclass(frozen=True)
class Recipe:
    """How one default model is built."""

    name: str
    """Folder name under the model directory; policies refer to the model by it."""
    description: str
    data: tuple[str, ...]
    """Files or folders under ``data/`` the model trains on; their bytes enter the key."""
    code: tuple[str, ...]
    """Modules whose source enters the key (the trainer's module is always included): every
    ``evaluators`` module whose code shapes the trained weights (data preparation, batching,
    the base model's path); infrastructure (settings, errors, the model cache) is left out,
    so editing it retrains nothing."""
    trainer: str
    """``module:function`` implementing ``Trainer``."""
    config: Mapping[str, Any] = field(default_factory=dict)
    """Hyperparameters (JSON-serialisable); they enter the key and reach the trainer."""

    def resolve_trainer(self) -> Trainer:
        module, _, attr = self.trainer.partition(":")
        fn: Trainer = getattr(importlib.import_module(module), attr)
        return fn


def recipes() -> dict[str, Recipe]:
    """The explicit registry of default models, in build order."""
    # Imported here, not at the top: checks import this module for BUILD_COMMAND and need
    # nothing from the trainers.
    from evaluators.nli_training import DEFAULTS as nli_defaults

    regs = [
        Recipe(
            name="abuse-minilm",
            description=(
                "Detoxify-format abuse classifier on MiniLM: hate, insult, threat, sexual, "
                "profanity, toxicity"
            ),
            data=("abuse",),
            code=(
                "evaluators.abuse_data",
                "evaluators.abuse_training",
                "evaluators.batched_encode",
                "evaluators.normalize",
                "evaluators.training",
            ),
            trainer="evaluators.abuse_training:train_abuse",
            config={
                "seed": 0,
                "epochs": 3,
                "batch_size": 32,
                "lr": 1e-4,
                "max_length": 64,
                "train_layers": 3,
                "template_repeat": 3,
                "min_family_rows": 150,
                "max_pos_weight": 4.0,
            },
        ),
        Recipe(
            name="nli-minilm",
            description="MiniLM cross-encoder: P(premise supports claim), for the hallucination check",
            data=("nli",),
            code=(
                "evaluators.nli_training",
                "evaluators.batched_encode",
                "evaluators.embeddings",
                "evaluators.training",
            ),
            trainer="evaluators.nli_training:train_nli",
            # One source of truth for the hyperparameters: the trainer's own defaults.
            config=dict(nli_defaults),
        ),
        Recipe(
            name="ner-minilm",
            description="PII tagger for PERSON, LOCATION, ORGANIZATION: fine-tuned MiniLM, window MLP",
            data=("ner",),
            code=("evaluators.ner_minilm", "evaluators.batched_encode", "evaluators.embeddings"),
            trainer="evaluators.ner_training:train_ner",
            config={
                "seed": 0,
                "epochs": 2,
                "train_layers": 2,
                "batch_size": 32,
                "hidden": 256,
                "lr": 1e-3,
                "lr_encoder": 1e-4,
                "o_weight": 0.5,
                "dropout": 0.2,
            },
        ),
    ]
    return {r.name: r for r in regs}


def cache_root() -> Path:
    return evaluator_settings().cache_dir / "models"


def _hash_path(h: Any, path: Path, label: str) -> None:
    if path.is_dir():
        for child in sorted(p for p in path.rglob("*") if p.is_file()):
            _hash_path(h, child, f"{label}/{child.relative_to(path).as_posix()}")
        return
    if not path.is_file():
        raise FileNotFoundError(f"build input {path} is missing (is the checkout complete?)")
    h.update(f"file {label} {path.stat().st_size}\n".encode())
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)


def cache_key(recipe: Recipe, data_dir: Path | None = None) -> str:
    """sha256 over the recipe's data bytes, code (syntax tree) and configuration."""
    data_dir = data_dir or DATA_DIR
    h = hashlib.sha256()
    h.update(f"assay-build {CACHE_FORMAT} {recipe.name}\n".encode())
    h.update(json.dumps(dict(recipe.config), sort_keys=True).encode())
    for rel in recipe.data:
        _hash_path(h, data_dir / rel, rel)
    modules = dict.fromkeys([*recipe.code, recipe.trainer.partition(":")[0]])
    for module in modules:
        # The syntax tree, not the text: reformatting or editing a comment retrains nothing.
        tree = ast.dump(ast.parse(inspect.getsource(importlib.import_module(module))))
        h.update(f"module {module} {len(tree)}\n".encode())
        h.update(tree.encode())
    return h.hexdigest()


@dataclass(frozen=True)
class BuildResult:
    name: str
    key: str
    path: Path
    cached: bool
    seconds: float
    metrics: Mapping[str, Any]


def _link(target: Path, link: Path) -> None:
    """Point ``link`` at ``target``, replacing an older link (or a stale folder) atomically."""
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() and Path(os.readlink(link)) == target:
        return
    tmp = link.with_name(f".{link.name}.link-{os.getpid()}")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(target, target_is_directory=True)
    if link.exists() and not link.is_symlink():
        # A folder from before builds were cached (or a hand-made one): move it aside.
        shutil.rmtree(link)
    os.replace(tmp, link)


def built_path(name: str) -> Path | None:
    """The cache entry the current code and data would use for ``name``, when it is built."""
    recipe = recipes()[name]
    entry = cache_root() / name / cache_key(recipe)[:16]
    return entry if (entry / BUILD_FILE).is_file() else None


def build(
    names: Iterable[str] | None = None,
    *,
    force: bool = False,
    model_dir: Path | None = None,
    progress: Progress = lambda msg: None,
    registry: Mapping[str, Recipe] | None = None,
    data_dir: Path | None = None,
) -> list[BuildResult]:
    """Build (or reuse) the named default models and link them into ``model_dir``.

    ``registry`` and ``data_dir`` default to the shipped recipes and ``data/``.
    """
    registry = registry or recipes()
    data_dir = data_dir or DATA_DIR
    wanted = list(names) if names else list(registry)
    unknown = [n for n in wanted if n not in registry]
    if unknown:
        raise KeyError(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(registry)}")
    model_dir = model_dir or evaluator_settings().model_dir
    results = []
    for name in wanted:
        recipe = registry[name]
        key = cache_key(recipe, data_dir)
        entry = cache_root() / name / key[:16]
        started = time.monotonic()
        if (entry / BUILD_FILE).is_file() and not force:
            meta = json.loads((entry / BUILD_FILE).read_text(encoding="utf-8"))
            _link(entry, model_dir / name)
            progress(f"{name}: cached ({entry})")
            results.append(
                BuildResult(name, key, entry, True, time.monotonic() - started, meta.get("metrics", {}))
            )
            continue
        progress(f"{name}: building ({recipe.description}); cache key {key[:16]}")
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=entry.parent, prefix=f".{key[:16]}.tmp-"))

        def step(msg: str, prefix: str = name) -> None:
            progress(f"{prefix}: {msg}")

        try:
            metrics = recipe.resolve_trainer()(tmp, data_dir, dict(recipe.config), step)
            seconds = round(time.monotonic() - started, 1)
            meta = {
                "name": name,
                "key": key,
                "description": recipe.description,
                "config": dict(recipe.config),
                "data": list(recipe.data),
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "seconds": seconds,
                "metrics": dict(metrics),
            }
            (tmp / BUILD_FILE).write_text(json.dumps(meta, indent=2, default=str) + "\n", encoding="utf-8")
            os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; the service may run as another user
            if entry.exists():  # force: replace the old entry
                shutil.rmtree(entry)
            tmp.rename(entry)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _link(entry, model_dir / name)
        progress(f"{name}: built in {seconds:.0f} s -> {entry}")
        results.append(BuildResult(name, key, entry, False, seconds, metrics))
    return results
