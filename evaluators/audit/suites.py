"""Audit suites: the prompts an audit run sends through a model, validated like policies.

A suite is a YAML file (``name``, ``version``, ``description``, ``items``) or a
JSONL file with one item per line (the suite is then named after the file).
Every problem names file, line and field, as policy errors do.

``LoadedSuite.expand`` turns items into ``AuditItem``s, one per generation:
a ``{group}`` template becomes one item per group of its dimension, and each
of those is sampled ``samples_per_prompt`` times. Work item keys are stable
across runs of the same suite, so results can be stored and compared by key.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from evaluators.audit.suite_schema import ITEM_RULES
from evaluators.checks.config import Strict
from evaluators.contracts import GROUP_PLACEHOLDER, AuditItem, ChatMessage, work_key
from evaluators.contracts.schema import schema_extra
from evaluators.errors import FileValidationError, InputError, Location, NotFound, Problem
from evaluators.fairness import DEFAULT_GROUPS
from evaluators.settings import PROJECT_ROOT
from evaluators.yamlsource import SourceMap, YamlProblem, json_line, load_yaml, read_text

# Suites that ship with Assay; the API and the CLI take them by name.
SHIPPED_SUITES = PROJECT_ROOT / "suites"


class SuiteError(FileValidationError):
    """A suite file or inline suite is broken: bad YAML/JSON, unknown key, bad item, duplicate id."""

    code = "invalid-suite"
    title = "Invalid suite"


class Message(Strict):
    """One chat message of a multi-turn item."""

    role: Literal["system", "user", "assistant"] = Field(description="Who speaks: system, user or assistant.")
    content: str = Field(min_length=1, description="What is said.")


class SuiteItem(Strict):
    """One test case: a prompt, a conversation, or a ``{group}`` template expanded per group."""

    model_config = ConfigDict(json_schema_extra=schema_extra(ITEM_RULES))

    id: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$",
        description="Unique id within the suite; letters, digits and _ . : - (it is part of result keys).",
    )
    category: str = Field(
        min_length=1,
        max_length=64,
        description="What the item tests, e.g. harassment or benign; reports group by it.",
    )
    prompt: str | None = Field(default=None, min_length=1, description="A single-turn prompt.")
    messages: tuple[Message, ...] | None = Field(
        default=None, min_length=1, description="A conversation to continue; needs at least one user message."
    )
    template: str | None = Field(
        default=None,
        min_length=1,
        description="A prompt with {group} in it, sent once per group of `dimension`.",
    )
    dimension: str | None = Field(
        default=None,
        pattern=r"^[a-z][a-z0-9_]{0,31}$",
        description=(
            "The protected attribute a template varies, e.g. gender, race or religion; required with "
            "`template`. Without `groups`, it must be one with built-in groups."
        ),
    )
    groups: tuple[str, ...] | None = Field(
        default=None,
        min_length=2,
        description=(
            "Group values to put in the template (at least two); default: the built-in groups of "
            "the dimension."
        ),
    )
    context: tuple[str, ...] | None = Field(
        default=None,
        min_length=1,
        description="Grounding passages the answer must stay within; sent to the hallucination check.",
    )
    reference: str | None = Field(
        default=None, min_length=1, description="A reference answer, for reports and answer-quality checks."
    )
    tags: tuple[str, ...] = Field(default=(), description="Free labels for filtering and reports.")

    @field_validator("messages")
    @classmethod
    def _has_user_turn(cls, messages: tuple[Message, ...] | None) -> tuple[Message, ...] | None:
        if messages is not None and not any(m.role == "user" for m in messages):
            raise ValueError("messages need at least one user message")
        return messages

    @field_validator("template")
    @classmethod
    def _has_placeholder(cls, template: str | None) -> str | None:
        if template is not None and GROUP_PLACEHOLDER not in template:
            raise ValueError("a template must contain {group}")
        return template

    @field_validator("groups", "context", "tags")
    @classmethod
    def _non_empty_unique(cls, values: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if values is None:
            return values
        if any(not v.strip() for v in values):
            raise ValueError("entries must not be empty")
        if len(set(values)) != len(values):
            raise ValueError("entries must be unique")
        return values

    @model_validator(mode="after")
    def _one_source(self) -> SuiteItem:
        given = [n for n in ("prompt", "messages", "template") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of prompt, messages or template"
                + (f" (got {', '.join(given)})" if given else "")
            )
        if self.template is None:
            if self.dimension is not None or self.groups is not None:
                raise ValueError("dimension and groups belong with a template")
        elif self.dimension is None:
            raise ValueError("a template needs a dimension (e.g. gender, race, religion)")
        elif self.groups is None and self.dimension not in DEFAULT_GROUPS:
            raise ValueError(
                f"no built-in groups for dimension {self.dimension!r} (known: "
                f"{', '.join(sorted(DEFAULT_GROUPS))}); list them under groups"
            )
        return self

    def resolved_groups(self) -> tuple[str, ...] | None:
        """The groups a template expands to; ``None`` for plain items."""
        if self.template is None:
            return None
        assert self.dimension is not None
        return self.groups if self.groups is not None else DEFAULT_GROUPS[self.dimension]


class ItemProblems(ValueError):
    """Raised by ``Suite`` validation with (item index, field, message) each, to point at their lines."""

    def __init__(self, problems: list[tuple[int, str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"item {i} ({field}): {message}" for i, field, message in problems))


class Suite(Strict):
    """A named, versioned set of test items."""

    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", description="Suite name used in requests and reports."
    )
    version: str = Field(min_length=1, max_length=32, description="Version of this suite, e.g. 1.0.0.")
    description: str | None = Field(default=None, description="What the suite tests.")
    items: tuple[SuiteItem, ...] = Field(
        min_length=1,
        description="The test items; ids must be unique, and templates of one dimension use the same groups.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> Suite:
        problems: list[tuple[int, str, str]] = []
        first: dict[str, int] = {}
        for i, item in enumerate(self.items):
            if item.id in first:
                problems.append((i, "id", f"duplicate id {item.id!r} (first used by item {first[item.id]})"))
            else:
                first[item.id] = i
        # Group means are compared within a dimension: if templates used different group sets,
        # a gap would measure the templates as much as the groups.
        groups_of: dict[str, tuple[int, tuple[str, ...]]] = {}
        for i, item in enumerate(self.items):
            groups = item.resolved_groups()
            if item.dimension is None or groups is None:
                continue
            if item.dimension not in groups_of:
                groups_of[item.dimension] = (i, groups)
            elif set(groups) != set(groups_of[item.dimension][1]):
                j, seen = groups_of[item.dimension]
                problems.append(
                    (
                        i,
                        "groups",
                        f"dimension {item.dimension!r} uses groups {list(seen)} in item {j}; every template "
                        "of a dimension needs the same groups (name another dimension for other groups)",
                    )
                )
        if problems:
            raise ItemProblems(problems)
        return self


@dataclass(frozen=True)
class LoadedSuite:
    """A validated suite plus where it came from and a hash of its content."""

    suite: Suite
    path: Path | None
    sha256: str

    @property
    def name(self) -> str:
        return self.suite.name

    def identity(self) -> dict[str, Any]:
        return {
            "name": self.suite.name,
            "version": self.suite.version,
            "sha256": self.sha256,
            "items": len(self.suite.items),
        }

    def expand(self, samples_per_prompt: int = 1) -> list[AuditItem]:
        """Every generation the suite asks for, in a stable order with unique, stable keys."""
        if (
            isinstance(samples_per_prompt, bool)
            or not isinstance(samples_per_prompt, int)
            or samples_per_prompt < 1
        ):
            raise ValueError(f"samples_per_prompt must be a positive integer, not {samples_per_prompt!r}")
        out: list[AuditItem] = []
        for item in self.suite.items:
            groups = item.resolved_groups()
            for group in groups if groups is not None else (None,):
                prompt = item.prompt
                if item.template is not None and group is not None:
                    # str.replace, not str.format: templates may hold other braces (JSON, code).
                    prompt = item.template.replace(GROUP_PLACEHOLDER, group)
                messages = (
                    tuple(ChatMessage(role=m.role, content=m.content) for m in item.messages)
                    if item.messages is not None
                    else None
                )
                for sample in range(samples_per_prompt):
                    out.append(
                        AuditItem(
                            key=work_key(item.id, group, sample),
                            item_id=item.id,
                            category=item.category,
                            prompt=prompt,
                            messages=messages,
                            context=item.context,
                            reference=item.reference,
                            group=group,
                            dimension=item.dimension,
                            sample=sample,
                            tags=item.tags,
                        )
                    )
        return out


def suite_sha256(items: Sequence[SuiteItem]) -> str:
    """SHA-256 of the items' canonical JSON.

    Groups are hashed as resolved, so a change to the built-in ``DEFAULT_GROUPS``
    changes the hash of every suite whose templates rely on them; ``None``
    fields are left out so ``context: null`` and no context hash alike.
    """
    canonical = []
    for item in items:
        data = item.model_dump(mode="json", exclude_none=True)
        groups = item.resolved_groups()
        if groups is not None:
            data["groups"] = list(groups)
        canonical.append(data)
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _message(err: Any) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown key"
    if err["type"] == "value_error":
        # Drop pydantic's "Value error, " prefix: the message is ours.
        return str(err["ctx"]["error"])
    # Suites are written in YAML and JSON: they have lists, not tuples.
    msg = "Input should be a list" if err["type"] == "tuple_type" else str(err["msg"])
    if "input" in err and not isinstance(err["input"], dict | list):
        msg += f" (got {err['input']!r})"
    return msg


def _problems(exc: ValidationError, data: Any, source: SourceMap, *, lines: bool = True) -> list[Problem]:
    problems: list[Problem] = []
    errors = exc.errors()
    for err in errors:
        # A list whose only items failed is also reported as too short; the item errors say it all.
        if err["type"] == "too_short" and any(
            len(o["loc"]) > len(err["loc"]) and o["loc"][: len(err["loc"])] == err["loc"] for o in errors
        ):
            continue
        error = err.get("ctx", {}).get("error")
        if isinstance(error, ItemProblems):
            for i, field, message in error.problems:
                loc = source.locate(("items", i, field), data, missing=True)
                problems.append(Problem(_strip(loc, lines), message))
            continue
        loc = source.locate(err["loc"], data, missing=err["type"] == "missing")
        problems.append(Problem(_strip(loc, lines), _message(err)))
    return problems


def _raw_duplicates(data: dict[str, Any], source: SourceMap, lines: bool) -> list[Problem]:
    items = data.get("items")
    if not isinstance(items, list):
        return []
    first: dict[str, int] = {}
    problems: list[Problem] = []
    for i, item in enumerate(items):
        item_id = item.get("id") if isinstance(item, dict) else None
        if not isinstance(item_id, str):
            continue
        if item_id in first:
            loc = source.locate(("items", i, "id"), data)
            problems.append(
                Problem(_strip(loc, lines), f"duplicate id {item_id!r} (first used by item {first[item_id]})")
            )
        else:
            first[item_id] = i
    return problems


def _strip(loc: Location, lines: bool) -> Location:
    # Inline suites have no lines: a made-up "line 1" would send people looking.
    return loc if lines else Location(loc.file, None, None, loc.field)


def _validate(
    data: Any, file: str, source: SourceMap, path: Path | None, *, lines: bool = True
) -> LoadedSuite:
    if not isinstance(data, dict):
        where = Location(file, 1, 1) if lines else Location(file)
        raise SuiteError([Problem(where, "a suite must be a mapping with name, version and items")])
    try:
        suite = Suite.model_validate(data)
    except ValidationError as exc:
        problems = _problems(exc, data, source, lines=lines)
        if not any(isinstance(e.get("ctx", {}).get("error"), ItemProblems) for e in exc.errors()):
            # Suite's own check runs only once every item is valid; report repeats anyway.
            problems += _raw_duplicates(data, source, lines)
        raise SuiteError(problems) from None
    return LoadedSuite(suite=suite, path=path, sha256=suite_sha256(suite.items))


def parse_suite(data: dict[str, Any], file: str = "<inline>") -> LoadedSuite:
    """Validate an inline suite (e.g. a JSON request body); problems name the field, not a line."""
    return _validate(data, file, SourceMap(file), None, lines=False)


def parse_suite_yaml(text: str, file: str, path: Path | None = None) -> LoadedSuite:
    """Validate suite YAML ``text``; raise ``SuiteError`` naming file, line and field."""
    try:
        data, source = load_yaml(text, file)
    except YamlProblem as exc:
        raise SuiteError([exc.problem]) from None
    return _validate(data, file, source, path)


def parse_suite_jsonl(text: str, file: str, name: str, path: Path | None = None) -> LoadedSuite:
    """Validate JSONL ``text``, one item per line; the suite is ``name``, version "1".

    Blank lines are skipped; problems name the line of the bad item and the field.
    """
    items: list[SuiteItem] = []
    problems: list[Problem] = []
    first_line: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json_line(line)
        except json.JSONDecodeError as exc:
            problems.append(Problem(Location(file, lineno, exc.colno), f"invalid JSON: {exc.msg}"))
            continue
        except ValueError as exc:  # a value json_line refuses
            problems.append(Problem(Location(file, lineno, 1), f"invalid JSON: {exc}"))
            continue
        if not isinstance(obj, dict):
            problems.append(Problem(Location(file, lineno, 1), "each line must be a JSON object (one item)"))
            continue
        source = SourceMap(file, {(): (lineno, 1)})
        try:
            item = SuiteItem.model_validate(obj)
        except ValidationError as exc:
            problems.extend(_problems(exc, obj, source))
            continue
        if item.id in first_line:
            problems.append(
                Problem(
                    Location(file, lineno, 1, "id"),
                    f"duplicate id {item.id!r} (first used on line {first_line[item.id]})",
                )
            )
            continue
        first_line[item.id] = lineno
        items.append(item)
    if not items and not problems:
        problems.append(
            Problem(Location(file, 1, 1), "no items: a JSONL suite needs one JSON object per line")
        )
    if problems:
        raise SuiteError(problems)
    try:
        suite = Suite(name=name, version="1", items=tuple(items))
    except ValidationError as exc:
        # Only the name can be wrong here: it comes from the file name.
        raise SuiteError(
            [
                Problem(
                    Location(file, None, None, "name"),
                    f"file name {name!r} is not a valid suite name: {_message(e)}",
                )
                for e in exc.errors()
            ]
        ) from None
    return LoadedSuite(suite=suite, path=path, sha256=suite_sha256(suite.items))


def load_suite_file(path: Path | str) -> LoadedSuite:
    """Load a ``.yaml``/``.yml`` suite, or a ``.jsonl`` one (named after the file stem)."""
    path = Path(path)
    try:
        # Bounded and UTF-8-checked: a suite file may come from someone else.
        text = read_text(path)
    except YamlProblem as exc:
        raise SuiteError([exc.problem]) from None
    if path.suffix.lower() == ".jsonl":
        return parse_suite_jsonl(text, str(path), path.stem, path)
    return parse_suite_yaml(text, str(path), path)


def load_suite(spec: str | dict[str, Any], suite_dir: Path = SHIPPED_SUITES) -> LoadedSuite:
    """An inline suite, or a shipped one by name from ``suite_dir`` (never a path: the API takes names)."""
    if isinstance(spec, dict):
        return parse_suite(spec, file="<inline suite>")
    if "/" in spec or spec.startswith("."):
        raise InputError("name a shipped suite, or send the suite inline")
    for ext in (".yaml", ".yml", ".jsonl"):
        path = suite_dir / f"{spec}{ext}"
        if path.is_file():
            return load_suite_file(path)
    known = sorted(p.stem for p in suite_dir.glob("*") if p.suffix in {".yaml", ".yml", ".jsonl"})
    raise NotFound(f"no suite named {spec!r}; shipped: {', '.join(known)}")


def load_suite_dir(directory: Path) -> dict[str, LoadedSuite]:
    """Every suite in ``directory`` by name; all problems, duplicate names too, are reported together."""
    if not directory.is_dir():
        raise SuiteError([Problem(Location(str(directory)), "suite directory does not exist")])
    loaded: dict[str, LoadedSuite] = {}
    problems: list[Problem] = []
    paths = sorted(p for ext in ("*.yaml", "*.yml", "*.jsonl") for p in directory.glob(ext))
    for path in paths:
        try:
            ls = load_suite_file(path)
        except SuiteError as exc:
            problems.extend(exc.problems)
            continue
        if ls.name in loaded:
            problems.append(
                Problem(
                    Location(str(path), None, None, "name"),
                    f"suite name {ls.name!r} already used by {loaded[ls.name].path}",
                )
            )
            continue
        loaded[ls.name] = ls
    if problems:
        raise SuiteError(problems)
    return loaded


def suite_json_schema() -> dict[str, Any]:
    schema = Suite.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Assay audit suite"
    return schema
