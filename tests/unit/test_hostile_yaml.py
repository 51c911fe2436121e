"""Policy and suite files that try YAML tricks are refused, naming file, line and field.

The fixtures under tests/fixtures/hostile are real malicious files: billion
laughs, Python tags that would run code, custom tags, huge and non-finite
numbers, deep nesting, alias cycles, control characters and non-UTF-8 bytes.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from evaluators.audit.suites import SuiteError, load_suite_file, parse_suite_yaml
from evaluators.errors import PolicyError
from evaluators.policy import load_policy_file, parse_policy
from evaluators.yamlsource import MAX_YAML_BYTES, load_yaml

ROOT = Path(__file__).resolve().parents[2]
HOSTILE = ROOT / "tests" / "fixtures" / "hostile"

# fixture -> (line, field or None, words the message holds)
POLICIES = {
    "billion_laughs_policy.yaml": (4, "e.0", "billion laughs"),
    "python_tag_policy.yaml": (3, "description", "tag !!python/object/apply:os.system is not allowed"),
    "python_object_policy.yaml": (4, "input.0", "tag !!python/object/new:subprocess.Popen is not allowed"),
    "custom_tag_policy.yaml": (5, "input.0.threshold", "tag !env is not allowed"),
    "huge_int_policy.yaml": (4, "limits.max_chars", "number too large"),
    "huge_float_policy.yaml": (7, "generation.limits.temperature.max", "not finite"),
    "bare_exponent_policy.yaml": (9, "generation.limits.max_new_tokens.max", "finite number"),
    "deep_policy.yaml": (3, None, "nested deeper than 32 levels"),
    "deep_block_policy.yaml": (35, None, "nested deeper than 32 levels"),
    "control_char_policy.yaml": (3, None, "#x0000 is not allowed"),
    "latin1_policy.yaml": (3, None, "not UTF-8"),
}

SUITES = {
    "billion_laughs_suite.yaml": (3, "x3", "billion laughs"),
    "python_tag_suite.yaml": (6, "items.0.prompt", "tag !!python/name:os.system is not allowed"),
    "recursive_alias_suite.yaml": (3, "items.0.extra", "cycle"),
    "merge_key_suite.yaml": (5, "items.0", "merge keys"),
    "huge_int.jsonl": (2, None, "number too large"),
    "nan.jsonl": (1, None, "NaN"),
    "deep.jsonl": (1, None, "nested too deeply"),
}


def _check(problem: object, fixture: str, line: int, field: str | None, words: str) -> None:
    loc = problem.location  # type: ignore[attr-defined]
    assert loc.file.endswith(fixture), str(problem)
    assert loc.line == line, str(problem)
    if field is not None:
        assert loc.field is not None and loc.field.startswith(field), str(problem)
    assert words in problem.message, str(problem)  # type: ignore[attr-defined]


@pytest.mark.parametrize("fixture", sorted(POLICIES))
def test_hostile_policy_is_refused(fixture: str) -> None:
    started = time.perf_counter()
    with pytest.raises(PolicyError) as info:
        load_policy_file(HOSTILE / fixture)
    # Refused quickly: nothing was expanded, converted or recursed into.
    assert time.perf_counter() - started < 2.0
    _check(info.value.problems[0], fixture, *POLICIES[fixture])


@pytest.mark.parametrize("fixture", sorted(SUITES))
def test_hostile_suite_is_refused(fixture: str) -> None:
    started = time.perf_counter()
    with pytest.raises(SuiteError) as info:
        load_suite_file(HOSTILE / fixture)
    assert time.perf_counter() - started < 2.0
    _check(info.value.problems[0], fixture, *SUITES[fixture])


def test_python_tags_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    text = f'name: x\nversion: "1"\ndescription: !!python/object/apply:os.system ["touch {marker}"]\n'
    with pytest.raises(PolicyError):
        parse_policy(text, "p.yaml")
    assert not marker.exists()


def test_oversized_file_is_refused_before_reading(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    with big.open("wb") as fh:  # sparse: 1 GiB on paper, nothing on disk
        fh.truncate(1 << 30)
    for load, error in ((load_policy_file, PolicyError), (load_suite_file, SuiteError)):
        with pytest.raises(error) as info:
            load(big)
        assert f"{1 << 30} bytes; at most {MAX_YAML_BYTES}" in str(info.value)


def test_oversized_text_is_refused() -> None:
    text = "name: x\ndescription: " + "x" * (MAX_YAML_BYTES + 1)
    with pytest.raises(SuiteError, match="at most"):
        parse_suite_yaml(text, "s.yaml")


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (".inf", "not finite"),
        ("-.inf", "not finite"),
        (".nan", "not finite"),
        ("1.0e+400", "not finite"),
        ("0x" + "f" * 40, "number too large"),
        ("99999999999999999999", "number too large"),
        ("!!binary aGVsbG8=", "tag !!binary is not allowed"),
        ("!!set {a, b}", "tag !!set is not allowed"),
        ("!!omap [a: 1]", "tag !!omap is not allowed"),
        ("2024-13-45", "month must be in 1..12"),
    ],
)
def test_hostile_scalars_name_their_field(value: str, words: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(f'name: x\nversion: "1"\nlimits:\n  max_chars: {value}\n', "p.yaml")
    problem = info.value.problems[0]
    assert (problem.location.line, problem.location.field) == (4, "limits.max_chars"), str(problem)
    assert words in problem.message, str(problem)


def test_plain_yaml_still_loads() -> None:
    # Anchors within budget, explicit core tags, dates, big-but-sane numbers.
    text = (
        "base: &b {threshold: 0.5, action: flag}\n"
        "a: *b\n"
        "b: [*b, *b]\n"
        "n: !!int 9223372036854775807\n"
        "s: !!str 12\n"
        "d: 2024-05-01\n"
        "f: -1.5e-3\n"
    )
    data, source = load_yaml(text, "ok.yaml")
    assert data["a"] == data["b"][1] == {"threshold": 0.5, "action": "flag"}
    assert data["n"] == 2**63 - 1 and data["s"] == "12"
    assert str(data["d"]) == "2024-05-01" and data["f"] == -1.5e-3
    assert source.marks[("b",)] == (3, 1)


def test_shipped_files_pass_the_hardened_loader() -> None:
    for path in sorted((ROOT / "policies").glob("*.yaml")):
        load_policy_file(path)
    for path in sorted((ROOT / "suites").glob("*.yaml")):
        load_suite_file(path)
