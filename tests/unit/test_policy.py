"""Policies validate strictly; a broken one names file, line and field."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from evaluators.engine import PolicyEngine
from evaluators.errors import PolicyError, PolicyNotFound
from evaluators.policy import (
    PolicyStore,
    load_policy_dir,
    load_policy_file,
    parse_policy,
    policy_json_schema,
)

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "policies"


@pytest.mark.parametrize("name", ["default", "strict", "grounded"])
def test_shipped_policies_validate(name: str) -> None:
    lp = load_policy_file(ROOT / "policies" / f"{name}.yaml")
    assert lp.name == name
    assert len(lp.sha256) == 64
    assert lp.policy.checks("input") and lp.policy.checks("output")


@pytest.mark.parametrize(
    ("fixture", "line", "field", "message"),
    [
        ("bad_yaml.yaml", 6, None, "invalid YAML"),
        ("unknown_check.yaml", 7, "output.1", "unknown check 'sentiment'"),
        ("bad_threshold.yaml", 6, "input.0.profanity.threshold", "less than or equal to 1"),
        ("unknown_key.yaml", 7, "output.0.redact_everything", "unknown key"),
        ("redact_toxicity.yaml", 4, "output.0", "redact"),
        ("missing_field.yaml", 1, "name", "Field required"),
    ],
)
def test_broken_policy_names_file_line_and_field(
    fixture: str, line: int, field: str | None, message: str
) -> None:
    with pytest.raises(PolicyError) as info:
        load_policy_file(FIXTURES / fixture)
    problem = info.value.problems[0]
    assert problem.location.file.endswith(fixture)
    assert problem.location.line == line, str(problem)
    if field is not None:
        assert problem.location.field is not None and problem.location.field.startswith(field), str(problem)
    assert message in problem.message, str(problem)
    assert fixture in str(info.value)


def test_missing_model_is_a_policy_error_at_build() -> None:
    lp = load_policy_file(FIXTURES / "missing_model.yaml")
    with pytest.raises(PolicyError) as info:
        PolicyEngine.build(lp)
    problem = info.value.problems[0]
    assert problem.location.line == 6, str(problem)
    assert problem.location.field == "output.0.detoxify.checkpoint"
    assert "train-toxicity" in problem.message


def test_not_a_mapping() -> None:
    with pytest.raises(PolicyError, match="mapping"):
        parse_policy("- just\n- a list\n", "list.yaml")


def test_duplicate_check_in_a_stage() -> None:
    text = "name: dup\nversion: '1'\noutput:\n  - check: toxicity\n  - check: toxicity\n"
    with pytest.raises(PolicyError, match="listed twice"):
        parse_policy(text, "dup.yaml")


def test_policy_dir_reports_every_broken_file_and_duplicate_names(tmp_path: Path) -> None:
    for f in ["bad_threshold.yaml", "unknown_key.yaml"]:
        (tmp_path / f).write_text((FIXTURES / f).read_text())
    (tmp_path / "a.yaml").write_text("name: same\nversion: '1'\n")
    (tmp_path / "b.yaml").write_text("name: same\nversion: '2'\n")
    with pytest.raises(PolicyError) as info:
        load_policy_dir(tmp_path)
    text = str(info.value)
    assert "bad_threshold.yaml:6" in text
    assert "unknown_key.yaml:7" in text
    assert "already used" in text


def test_policy_is_frozen() -> None:
    lp = load_policy_file(ROOT / "policies" / "default.yaml")
    with pytest.raises(Exception, match="frozen"):
        lp.policy.name = "changed"  # type: ignore[misc]


def test_store_unknown_policy() -> None:
    store = PolicyStore(load_policy_dir(ROOT / "policies"))
    with pytest.raises(PolicyNotFound, match="known: consistency, default, grounded, strict"):
        store.get("nope")


def _walk(schema: dict, path: str = "") -> list[str]:  # type: ignore[type-arg]
    """Properties in the JSON Schema that lack a description."""
    missing = []
    for name, node in schema.get("properties", {}).items():
        if "description" not in node:
            missing.append(f"{path}{name}")
    for name, node in schema.get("$defs", {}).items():
        missing += _walk(node, f"{name}.")
    return missing


def test_every_field_is_described() -> None:
    schema = policy_json_schema()
    assert _walk(schema) == []
    assert schema["additionalProperties"] is False


def test_cli_validate_and_schema(tmp_path: Path) -> None:
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "service.cli",
            "policy",
            "validate",
            "--no-models",
            str(FIXTURES / "bad_threshold.yaml"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert bad.returncode == 1
    assert "bad_threshold.yaml:6" in bad.stderr and "threshold" in bad.stderr
    good = subprocess.run(
        [
            sys.executable,
            "-m",
            "service.cli",
            "policy",
            "validate",
            "--no-models",
            str(ROOT / "policies" / "default.yaml"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert good.returncode == 0, good.stderr
    assert "ok:" in good.stdout
    out = tmp_path / "schema.json"
    schema = subprocess.run(
        [sys.executable, "-m", "service.cli", "policy", "schema", "-o", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert schema.returncode == 0, schema.stderr
    assert json.loads(out.read_text())["title"] == "Assay policy"


def test_empty_values_parse_as_null_not_as_broken_yaml() -> None:
    lp = parse_policy("name: empty\nversion: '1'\ndescription:\ninput: []\n", "empty.yaml")
    assert lp.policy.description is None
