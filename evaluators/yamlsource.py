"""YAML loading that remembers where every value came from.

Pydantic reports errors by path (``output.0.entities.EMAIL.threshold``);
people fix files by line. ``load_yaml`` returns the data together with a map
from path to line, so every validation error can name file, line and field.

Policy and suite files may come from people Assay should not trust, so only
plain YAML is read: the core tags (str, int, float, bool, null, seq, map),
bounded nesting, bounded alias expansion (no "billion laughs"), numbers that
fit in 64 bits and are finite, and files of at most ``MAX_YAML_BYTES``.
Anything else is refused with its file, line and field, never constructed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from evaluators.errors import Location, Problem

PathKey = tuple[str | int, ...]

# Shipped policies and suites are a few KB; a generous cap still stops a
# multi-gigabyte file from being read into memory.
MAX_YAML_BYTES = 4 * 1024 * 1024
# Deeper than any real policy or suite (they nest under 10); the parser and
# the constructor recurse per level.
MAX_DEPTH = 32
# Values aliases may add on top of those written out: anchors stay useful,
# exponential expansion does not.
MAX_ALIAS_VALUES = 10_000
# Ints beyond 64 bits mean nothing in a policy, and converting huge digit
# strings is quadratic (Python caps it with a ValueError at 4300 digits).
MAX_INT = 2**63 - 1
_CORE = "tag:yaml.org,2002:"
# The core schema, plus dates, which plain scalars like 2024-05-01 resolve to.
ALLOWED_TAGS = frozenset(
    _CORE + t for t in ("str", "int", "float", "bool", "null", "seq", "map", "timestamp")
)


@dataclass
class SourceMap:
    """Line and column (1-based) of each path in a loaded document."""

    file: str
    marks: dict[PathKey, tuple[int, int]] = field(default_factory=dict)

    def locate(self, loc: Sequence[str | int], data: Any, *, missing: bool = False) -> Location:
        """Best location for a pydantic error ``loc``.

        Pydantic inserts union tags and model names into ``loc`` that are not
        in the data, so walk the data and keep only steps that exist.
        """
        path: list[str | int] = []
        node = data
        found_last = False
        for step in loc:
            found_last = False
            if (isinstance(node, dict) and step in node) or (
                isinstance(node, list) and isinstance(step, int) and 0 <= step < len(node)
            ):
                path.append(step)
                node = node[step]  # type: ignore[index]
                found_last = True
        key: PathKey = tuple(path)
        while key and key not in self.marks:
            key = key[:-1]
        line, col = self.marks.get(key, (1, 1))
        # A missing field is not in the data: name it after the path that holds it.
        # Other unmatched steps are union tags and model names pydantic adds.
        shown = [*path, loc[-1]] if missing and loc and not found_last else path
        dotted = ".".join(str(p) for p in shown) or None
        return Location(self.file, line, col, dotted)


class _Builder:
    """Builds plain data from a composed node graph, within the alias budget."""

    def __init__(self, budget: int, marks: dict[PathKey, tuple[int, int]]) -> None:
        self.budget = budget
        self.marks = marks
        self._open: set[int] = set()

    def build(self, node: yaml.Node, path: PathKey) -> Any:
        self.budget -= 1
        if self.budget < 0:
            raise _refuse(
                node,
                f"aliases expand to more than {MAX_ALIAS_VALUES} extra values (a 'billion laughs' document?)",
                path,
            )
        if len(path) > MAX_DEPTH:
            raise _refuse(node, f"nested deeper than {MAX_DEPTH} levels", path)
        self.marks[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
        if node.tag not in ALLOWED_TAGS:
            # Checked on the node, never constructed: !!python/object and friends run code.
            tag = str(node.tag)
            shown = "!!" + tag.removeprefix(_CORE) if tag.startswith(_CORE) else tag
            raise _refuse(
                node,
                f"tag {shown} is not allowed; write plain values "
                "(strings, numbers, booleans, null, lists and mappings)",
                path,
            )
        if not isinstance(node, yaml.MappingNode | yaml.SequenceNode):
            return _scalar(node, path)
        if id(node) in self._open:
            raise _refuse(node, "an alias refers to the collection that holds it (a cycle)", path)
        self._open.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
            return self._mapping(node, path)
        finally:
            self._open.discard(id(node))

    def _mapping(self, node: yaml.MappingNode, path: PathKey) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise _refuse(key_node, "a mapping key must be a plain value, not a list or mapping", path)
            if key_node.tag == _CORE + "merge":
                raise _refuse(key_node, "merge keys (<<) are not supported; write the keys out", path)
            if key_node.tag not in ALLOWED_TAGS:
                raise _refuse(key_node, f"tag {key_node.tag} is not allowed on a key", path)
            key = _scalar(key_node, path)
            if key in out:
                raise _refuse(key_node, f"duplicate key {key!r}", path)
            child = (*path, key)
            out[key] = self.build(value_node, child)
            # Point at the key, not the value: that is the line people look for.
            self.marks[child] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
        return out


class _Refused(yaml.MarkedYAMLError):
    """A value Assay will not read, with the field it sits in."""

    def __init__(self, node: yaml.Node, problem: str, path: PathKey) -> None:
        super().__init__(problem=problem, problem_mark=node.start_mark)
        self.field = ".".join(str(p) for p in path) or None


def _refuse(node: yaml.Node, problem: str, path: PathKey = ()) -> _Refused:
    return _Refused(node, problem, path)


def _scalar(node: yaml.Node, path: PathKey = ()) -> Any:
    """A scalar (or a flow key) as the safe loader would build it: ints, floats, bools, nulls."""
    if node.tag == _CORE + "str":
        return node.value
    if node.tag == _CORE + "int" and len(node.value) > 40:
        # Refused before conversion: a 10,000-digit int costs time even to reject.
        raise _refuse(node, f"number too large ({len(node.value)} characters); at most {MAX_INT}", path)
    try:
        # Construct from the node itself: re-serialising an empty null fails to parse.
        value = yaml.SafeLoader("").construct_object(node, deep=True)
    except (ValueError, OverflowError) as exc:  # e.g. a date like 2024-13-45
        raise _refuse(node, f"cannot read value {node.value!r}: {exc}", path) from None
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and abs(value) > MAX_INT:
        raise _refuse(node, f"number too large; at most {MAX_INT}", path)
    if isinstance(value, float) and not math.isfinite(value):
        raise _refuse(node, f"number {node.value!r} is not finite (infinity, NaN or out of range)", path)
    return value


def _screen(text: str) -> int:
    """Refuse nesting deeper than ``MAX_DEPTH`` from the event stream; return the value count.

    Runs before composing: the parser keeps its own stack, so deep nesting is
    caught here without the recursion composing would need.
    """
    depth = values = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                mark: Any = event.start_mark
                raise yaml.MarkedYAMLError(
                    problem=f"nested deeper than {MAX_DEPTH} levels", problem_mark=mark
                )
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
        if isinstance(event, yaml.ScalarEvent | yaml.CollectionStartEvent):
            values += 1
    return values


def load_yaml(text: str, file: str) -> tuple[Any, SourceMap]:
    """Parse YAML ``text``; raise ``YamlProblem`` with a location on bad or hostile input."""
    source = SourceMap(file)
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_YAML_BYTES:
        raise YamlProblem(Problem(Location(file), _too_large(size)))
    try:
        values = _screen(text)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is None:
            return None, source
        data = _Builder(values + MAX_ALIAS_VALUES, source.marks).build(node, ())
    except yaml.YAMLError as exc:
        raise YamlProblem(_problem_from_yaml(exc, text, file)) from exc
    return data, source


def _too_large(size: int) -> str:
    return f"file is {size} bytes; at most {MAX_YAML_BYTES} are read"


def _problem_from_yaml(exc: yaml.YAMLError, text: str, file: str) -> Problem:
    if isinstance(exc, yaml.reader.ReaderError):
        # A control or non-UTF-8 character: the reader knows only the offset.
        at = exc.position
        row, column = text.count("\n", 0, at) + 1, at - text.rfind("\n", 0, at)
        what = f"character #x{exc.character:04x}" if isinstance(exc.character, int) else "character"
        return Problem(Location(file, row, column, None), f"invalid YAML: {what} is not allowed")
    if not isinstance(exc, yaml.MarkedYAMLError):
        return Problem(Location(file), f"invalid YAML: {exc}")
    mark = exc.problem_mark or exc.context_mark
    line = mark.line + 1 if mark else None
    col = mark.column + 1 if mark else None
    field = exc.field if isinstance(exc, _Refused) else None
    return Problem(Location(file, line, col, field), f"invalid YAML: {exc.problem or exc}")


class YamlProblem(Exception):
    def __init__(self, problem: Problem) -> None:
        super().__init__(str(problem))
        self.problem = problem


def read_text(path: Path) -> str:
    """A policy or suite file's text: ``YamlProblem`` if unreadable, too large or not UTF-8.

    The size is checked before reading, so a huge file is never loaded.
    """
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_YAML_BYTES + 1)
    except OSError as exc:
        raise YamlProblem(Problem(Location(str(path)), f"cannot read: {exc.strerror}")) from None
    if len(raw) > MAX_YAML_BYTES:
        size = max(len(raw), path.stat().st_size)
        raise YamlProblem(Problem(Location(str(path)), _too_large(size)))
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise YamlProblem(Problem(Location(str(path), line), f"not UTF-8 text: {exc.reason}")) from None


def _json_int(digits: str) -> int:
    # Checked before conversion: int() of a huge digit string is slow, then a ValueError.
    if len(digits) > 20 or abs(value := int(digits)) > MAX_INT:
        raise ValueError(f"number too large; at most {MAX_INT}")
    return value


def _json_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text} is out of range")
    return value


def _json_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


def json_line(line: str) -> Any:
    """One line of a JSONL file under the same rules as YAML files.

    No NaN or infinities, ints within 64 bits, nesting within ``MAX_DEPTH``;
    a refusal is a ``ValueError`` (``json.JSONDecodeError`` for bad syntax).
    """
    try:
        value = json.loads(line, parse_int=_json_int, parse_float=_json_float, parse_constant=_json_constant)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    if _depth(value) > MAX_DEPTH:
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
    return value


def _depth(value: Any) -> int:
    """Nesting depth of parsed JSON, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node))
    return deepest
