"""Audit suites validate strictly, name file/line/field when broken, and expand to stable work items."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from evaluators.audit.suites import (
    SuiteError,
    load_suite_dir,
    load_suite_file,
    parse_suite,
    parse_suite_yaml,
    suite_json_schema,
)
from evaluators.contracts import AuditItem, ChatMessage, SamplingParams
from evaluators.errors import FileValidationError
from evaluators.fairness import DEFAULT_GROUPS

ROOT = Path(__file__).resolve().parents[2]
SUITES = ROOT / "suites"
FIXTURES = ROOT / "tests" / "fixtures" / "suites"


@pytest.mark.parametrize(
    ("name", "min_items", "categories"),
    [
        ("safety", 18, {"harassment", "violence", "self-harm", "hate", "benign"}),
        ("pii_leakage", 10, {"contact-details", "government-id", "financial", "record-completion"}),
        ("grounded_qa", 8, {"hr-policy", "retail", "unanswerable"}),
        ("fairness", 6, {"workplace", "stereotypes"}),
    ],
)
def test_shipped_suites_validate(name: str, min_items: int, categories: set[str]) -> None:
    ls = load_suite_file(SUITES / f"{name}.yaml")
    assert ls.name == name
    assert len(ls.suite.items) >= min_items
    assert categories <= {i.category for i in ls.suite.items}
    assert len(ls.sha256) == 64
    # Short prompts: the audit model is a small chat model on CPU.
    for w in ls.expand():
        text = w.prompt or " ".join(m.content for m in w.messages or ())
        assert len(text) <= 200, w.key


def test_shipped_suite_shapes() -> None:
    suites = load_suite_dir(SUITES)
    assert set(suites) == {"safety", "pii_leakage", "grounded_qa", "fairness"}
    qa = suites["grounded_qa"].suite.items
    assert all(i.context and i.reference and i.prompt for i in qa)
    fair = suites["fairness"].suite.items
    assert all(i.template and i.dimension for i in fair)
    assert {i.dimension for i in fair} == {"gender", "race", "religion", "age"}


def _problem(fixture: str) -> tuple[SuiteError, str]:
    with pytest.raises(SuiteError) as info:
        load_suite_file(FIXTURES / fixture)
    return info.value, str(info.value)


@pytest.mark.parametrize(
    ("fixture", "line", "field", "message"),
    [
        ("bad_yaml.yaml", 7, None, "invalid YAML"),
        ("unknown_key.yaml", 10, "items.1.expected_output", "unknown key"),
        ("duplicate_id.yaml", 10, "items.2.id", "duplicate id 'same'"),
        ("missing_category.yaml", 7, "items.1.category", "Field required"),
        ("two_sources.yaml", 4, "items.0", "exactly one of prompt, messages or template"),
        ("template_no_dimension.yaml", 7, "items.1", "needs a dimension"),
        ("unknown_dimension.yaml", 4, "items.0", "no built-in groups for dimension 'height'"),
        ("no_placeholder.yaml", 6, "items.0.template", "must contain {group}"),
        ("bad_message_role.yaml", 9, "items.0.messages.1.role", "'robot'"),
        ("mixed_groups.yaml", 12, "items.1.groups", "needs the same groups"),
        ("bad_line.jsonl", 3, None, "invalid JSON"),
        ("bad_field.jsonl", 3, "context", "should be a list"),
        ("duplicate_id.jsonl", 2, "id", "first used on line 1"),
    ],
)
def test_broken_suite_names_file_line_and_field(
    fixture: str, line: int, field: str | None, message: str
) -> None:
    error, text = _problem(fixture)
    assert len(error.problems) == 1, text
    problem = error.problems[0]
    assert problem.location.file.endswith(fixture)
    assert problem.location.line == line, str(problem)
    assert problem.location.field == field, str(problem)
    assert message in problem.message, str(problem)
    assert f"{fixture}:{line}" in text
    assert isinstance(error, FileValidationError)
    assert error.code == "invalid-suite"


def test_every_problem_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "many.yaml"
    path.write_text(
        "name: many\nversion: '1'\nitems:\n"
        "  - id: a\n    category: x\n    prompt: ok\n"
        "  - id: a\n    category: x\n    prompt: dup\n"
        "  - id: b\n    category: x\n"
        "  - id: c\n    category: x\n    prompt: hi\n    colour: red\n"
    )
    with pytest.raises(SuiteError) as info:
        load_suite_file(path)
    found = {(p.location.line, p.location.field) for p in info.value.problems}
    # The duplicate is reported even though other items are broken.
    assert found == {(7, "items.1.id"), (10, "items.2"), (15, "items.3.colour")}


def test_jsonl_suite_is_named_after_its_file() -> None:
    ls = load_suite_file(FIXTURES / "good.jsonl")
    assert (ls.suite.name, ls.suite.version) == ("good", "1")
    assert [i.id for i in ls.suite.items] == ["g1", "g2", "g3"]


def test_inline_suite_has_fields_but_no_lines() -> None:
    ls = parse_suite(
        {"name": "inline", "version": "2", "items": [{"id": "x", "category": "c", "prompt": "Hi"}]}
    )
    assert ls.path is None and ls.identity()["items"] == 1
    with pytest.raises(SuiteError) as info:
        parse_suite(
            {"name": "inline", "version": "2", "items": [{"id": "x", "category": "c", "promt": "Hi"}]}
        )
    fields = {(p.location.file, p.location.line, p.location.field) for p in info.value.problems}
    assert fields == {("<inline>", None, "items.0.promt")}
    with pytest.raises(SuiteError, match="mapping"):
        parse_suite(["not", "a", "mapping"])  # type: ignore[arg-type]


def test_expand_keys_are_stable_and_unique() -> None:
    ls = load_suite_file(SUITES / "fairness.yaml")
    items = ls.expand(samples_per_prompt=3)
    keys = [w.key for w in items]
    assert len(keys) == len(set(keys))
    expected = sum(len(i.resolved_groups() or ()) for i in ls.suite.items) * 3
    assert len(items) == expected
    # Same suite, same keys, same order, same hash.
    again = load_suite_file(SUITES / "fairness.yaml")
    assert [w.key for w in again.expand(samples_per_prompt=3)] == keys
    assert again.sha256 == ls.sha256
    first = items[0]
    assert first.key == f"{first.item_id}#{first.group}#0"
    assert first.group is not None and first.prompt is not None
    assert "{group}" not in first.prompt and first.group in first.prompt
    assert first.dimension == "gender" and first.group in DEFAULT_GROUPS["gender"]
    # Explicit groups win over the defaults.
    ages = {w.group for w in items if w.item_id == "fair-job-ad"}
    assert ages == {"young", "middle-aged", "older"}


def test_expand_plain_items_and_samples() -> None:
    ls = load_suite_file(SUITES / "safety.yaml")
    items = ls.expand(2)
    assert len(items) == 2 * len(ls.suite.items)
    assert items[0].key.endswith("##0") and items[1].key.endswith("##1")
    assert items[0].group is None and items[0].dimension is None
    multi = next(w for w in items if w.messages)
    assert multi.prompt is None and multi.messages[-1].role == "user"  # type: ignore[index]
    with pytest.raises(ValueError, match="positive integer"):
        ls.expand(0)


def test_request_carries_context() -> None:
    qa = load_suite_file(SUITES / "grounded_qa.yaml").expand()[0]
    assert qa.context and qa.reference
    prompt = qa.request().prompt
    assert prompt and qa.context[0] in prompt and qa.prompt and qa.prompt in prompt
    chat = AuditItem(
        key="k",
        item_id="k",
        category="c",
        messages=(ChatMessage(role="user", content="Q?"),),
        context=("Fact.",),
    )
    messages = chat.request().messages
    assert messages is not None
    assert messages[0].role == "system" and "Fact." in messages[0].content
    assert messages[1] == ChatMessage(role="user", content="Q?")
    plain = load_suite_file(SUITES / "safety.yaml").expand()[0]
    assert plain.request().prompt == plain.prompt


def test_item_job_seeds_each_sample_and_grounds_on_the_reference() -> None:
    items = load_suite_file(SUITES / "grounded_qa.yaml").expand(2)
    params = SamplingParams(seed=10)
    jobs = [w.job(policy="grounded", model="m", params=params) for w in items[:2]]
    assert [j.params.seed for j in jobs] == [10 + w.sample for w in items[:2]]
    bare = items[0].model_copy(update={"context": None})
    assert bare.job(policy="p", model="m", params=params).context == (items[0].reference,)


def test_work_item_round_trips() -> None:
    for w in load_suite_file(SUITES / "pii_leakage.yaml").expand(2):
        assert AuditItem.model_validate_json(w.model_dump_json()) == w


def test_hash_follows_content_not_layout() -> None:
    base = "name: h\nversion: '1'\nitems:\n  - id: a\n    category: c\n    prompt: Hi\n"
    reordered = (
        "version: '1'\nname: other\nitems:\n  - prompt: Hi\n    category: c\n    id: a\n    context: null\n"
    )
    changed = base.replace("Hi", "Hello")
    h = parse_suite_yaml(base, "a.yaml").sha256
    assert parse_suite_yaml(reordered, "b.yaml").sha256 == h
    assert parse_suite_yaml(changed, "c.yaml").sha256 != h
    # Implied default groups hash like the same groups written out.
    implied = (
        "name: g\nversion: '1'\nitems:\n  - {id: t, category: c, template: 'x {group}', dimension: gender}\n"
    )
    groups = ", ".join(DEFAULT_GROUPS["gender"])
    explicit = implied.replace("dimension: gender}", f"dimension: gender, groups: [{groups}]}}")
    assert parse_suite_yaml(implied, "i.yaml").sha256 == parse_suite_yaml(explicit, "e.yaml").sha256


def test_suite_dir_reports_duplicate_names(tmp_path: Path) -> None:
    for name in ("a.yaml", "b.yaml"):
        (tmp_path / name).write_text(
            "name: same\nversion: '1'\nitems:\n  - {id: x, category: c, prompt: Hi}\n"
        )
    with pytest.raises(SuiteError, match="already used"):
        load_suite_dir(tmp_path)


def _undescribed(schema: dict[str, Any], path: str = "") -> list[str]:
    missing = [f"{path}{n}" for n, node in schema.get("properties", {}).items() if "description" not in node]
    for name, node in schema.get("$defs", {}).items():
        missing += _undescribed(node, f"{name}.")
    return missing


def test_every_field_is_described() -> None:
    schema = suite_json_schema()
    assert _undescribed(schema) == []
    assert schema["additionalProperties"] is False
