"""The default-model build: cache keys, reuse, atomic writes, links, and the shipped registry."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from evaluators import build as build_mod
from evaluators.build import BUILD_FILE, Recipe, build, cache_key, recipes
from evaluators.settings import evaluator_settings

CALLS: list[dict[str, Any]] = []


def fake_trainer(out_dir: Path, data_dir: Path, config: Mapping[str, Any], progress: Any) -> dict[str, Any]:
    """Writes a marker file; raises when the config asks it to, like a crashed training run."""
    CALLS.append(dict(config))
    (out_dir / "weights.bin").write_text((data_dir / "toy" / "rows.txt").read_text() + str(config["lr"]))
    progress("trained")
    if config.get("crash"):
        raise RuntimeError("training crashed")
    return {"auc": 0.9}


def recipe(**config: Any) -> Recipe:
    return Recipe(
        name="toy",
        description="a toy model",
        data=("toy",),
        code=(),
        trainer=f"{__name__}:fake_trainer",
        config={"lr": 0.1, **config},
    )


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ASSAY_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("ASSAY_MODEL_DIR", str(tmp_path / "models"))
    evaluator_settings.reset()
    (tmp_path / "data" / "toy").mkdir(parents=True)
    (tmp_path / "data" / "toy" / "rows.txt").write_text("a,b\n")
    CALLS.clear()
    yield tmp_path
    evaluator_settings.reset()


def test_key_changes_with_data_config_and_code(env: Path) -> None:
    data = env / "data"
    base = cache_key(recipe(), data)
    assert cache_key(recipe(), data) == base  # deterministic
    assert cache_key(recipe(lr=0.2), data) != base
    assert cache_key(Recipe(**{**recipe().__dict__, "code": ("evaluators.normalize",)}), data) != base
    (data / "toy" / "rows.txt").write_text("a,c\n")
    assert cache_key(recipe(), data) != base


def test_second_build_is_cached_and_linked(env: Path) -> None:
    reg = {"toy": recipe()}
    first = build(registry=reg, data_dir=env / "data")
    assert [r.cached for r in first] == [False]
    assert len(CALLS) == 1
    entry = first[0].path
    assert json.loads((entry / BUILD_FILE).read_text())["metrics"] == {"auc": 0.9}
    link = env / "models" / "toy"
    assert link.is_symlink() and link.resolve() == entry.resolve()
    assert (link / "weights.bin").read_text() == "a,b\n0.1"

    second = build(registry=reg, data_dir=env / "data")
    assert [r.cached for r in second] == [True]
    assert len(CALLS) == 1  # not trained again
    assert second[0].metrics == {"auc": 0.9}

    # Changed data: a new entry, and the link moves to it.
    (env / "data" / "toy" / "rows.txt").write_text("x,y\n")
    third = build(registry=reg, data_dir=env / "data")
    assert not third[0].cached and third[0].path != entry
    assert (link / "weights.bin").read_text() == "x,y\n0.1"


def test_failed_build_leaves_nothing_behind(env: Path) -> None:
    reg = {"toy": recipe(crash=True)}
    with pytest.raises(RuntimeError, match="training crashed"):
        build(registry=reg, data_dir=env / "data")
    root = env / "cache" / "models" / "toy"
    assert list(root.iterdir()) == []  # the temporary folder was removed, no entry exists
    assert not (env / "models" / "toy").exists()


def test_force_rebuilds(env: Path) -> None:
    reg = {"toy": recipe()}
    build(registry=reg, data_dir=env / "data")
    again = build(registry=reg, data_dir=env / "data", force=True)
    assert not again[0].cached
    assert len(CALLS) == 2


def test_stale_folder_is_replaced_by_link(env: Path) -> None:
    stale = env / "models" / "toy"
    stale.mkdir(parents=True)
    (stale / "old.bin").write_text("old")
    build(registry={"toy": recipe()}, data_dir=env / "data")
    assert stale.is_symlink() and not (stale / "old.bin").exists()


def test_unknown_name_is_an_error(env: Path) -> None:
    with pytest.raises(KeyError, match="unknown model"):
        build(["nope"], registry={"toy": recipe()}, data_dir=env / "data")


def test_missing_data_is_a_clear_error(env: Path) -> None:
    bad = Recipe(**{**recipe().__dict__, "data": ("absent",)})
    with pytest.raises(FileNotFoundError, match="absent"):
        cache_key(bad, env / "data")


def test_shipped_recipes_resolve_and_their_data_exists() -> None:
    for name, r in recipes().items():
        assert r.name == name
        assert callable(r.resolve_trainer())
        for rel in r.data:
            assert (build_mod.DATA_DIR / rel).exists(), f"{name}: data/{rel} missing"
        assert len(cache_key(r)) == 64


def test_policy_naming_an_unbuilt_model_names_the_build_command(env: Path) -> None:
    from evaluators.checks.toxicity import ToxicityCheck, ToxicityConfig
    from evaluators.errors import ModelMissingError

    # env points ASSAY_MODEL_DIR at an empty folder: abuse-minilm is not built there.
    check = ToxicityCheck(
        ToxicityConfig(check="toxicity", profanity=None, detoxify={"checkpoint": "abuse-minilm"})
    )
    with pytest.raises(ModelMissingError, match="assay models build") as err:
        check.load()
    assert err.value.extra["field"] == "detoxify.checkpoint"


def test_key_ignores_formatting_and_comments_but_not_code(env: Path, tmp_path: Path) -> None:
    import importlib
    import sys

    pkg = tmp_path / "keymods"
    pkg.mkdir()
    mod = pkg / "toy_trainer_mod.py"
    sys.path.insert(0, str(pkg))
    try:

        def key_for(source: str) -> str:
            mod.write_text(source)
            sys.modules.pop("toy_trainer_mod", None)
            importlib.invalidate_caches()
            r = Recipe(**{**recipe().__dict__, "code": ("toy_trainer_mod",)})
            return cache_key(r, env / "data")

        base = key_for("def f(x):\n    return x + 1\n")
        assert key_for("# a comment\ndef f(x):\n\n    return x+1  # why\n") == base
        assert key_for("def f(x):\n    return x + 2\n") != base
    finally:
        sys.path.remove(str(pkg))
        sys.modules.pop("toy_trainer_mod", None)


# Modules that cannot change what a trainer learns: where settings and models live, errors.
_INFRASTRUCTURE = {"evaluators.settings", "evaluators.errors", "evaluators.models", "evaluators.build"}


def _evaluators_imports(module: str) -> set[str]:
    """``evaluators`` modules ``module`` imports anywhere in its source (function-level too)."""
    import ast
    import importlib
    import inspect

    tree = ast.parse(inspect.getsource(importlib.import_module(module)))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("evaluators."):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("evaluators."))
    return found


def test_shipped_recipes_key_every_module_their_training_code_uses() -> None:
    # A trainer's helper left out of the key would let a change to it reuse a stale model.
    for name, r in recipes().items():
        keyed = {*r.code, r.trainer.partition(":")[0]}
        for module in sorted(keyed):
            missing = _evaluators_imports(module) - keyed - _INFRASTRUCTURE
            assert not missing, f"{name}: {module} imports {sorted(missing)}, not in the recipe's code"
