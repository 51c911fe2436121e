"""YAML loading that remembers where every value came from.

Pydantic reports errors by path (``output.0.entities.EMAIL.threshold``);
people fix files by line. ``load_yaml`` returns the data together with a map
from path to line, so every validation error can name file, line and field.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from evaluators.errors import Location, Problem

PathKey = tuple[str | int, ...]


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


def _construct(node: yaml.Node, path: PathKey, marks: dict[PathKey, tuple[int, int]]) -> Any:
    marks[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = _scalar(key_node)
            if key in out:
                raise yaml.MarkedYAMLError(problem=f"duplicate key {key!r}", problem_mark=key_node.start_mark)
            child = (*path, key)
            out[key] = _construct(value_node, child, marks)
            # Point at the key, not the value: that is the line people look for.
            marks[child] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(item, (*path, i), marks) for i, item in enumerate(node.value)]
    return _scalar(node)


def _scalar(node: yaml.Node) -> Any:
    """A scalar (or a flow key) as the safe loader would build it: ints, floats, bools, nulls."""
    if node.tag == "tag:yaml.org,2002:str":
        return node.value
    # Construct from the node itself: re-serialising an empty null fails to parse.
    return yaml.SafeLoader("").construct_object(node, deep=True)


def load_yaml(text: str, file: str) -> tuple[Any, SourceMap]:
    """Parse YAML ``text``; raise ``YamlProblem`` with a location on bad syntax."""
    source = SourceMap(file)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        raise YamlProblem(_problem_from_yaml(exc, file)) from exc
    if node is None:
        return None, source
    try:
        data = _construct(node, (), source.marks)
    except yaml.MarkedYAMLError as exc:
        raise YamlProblem(_problem_from_yaml(exc, file)) from exc
    return data, source


def _problem_from_yaml(exc: yaml.MarkedYAMLError, file: str) -> Problem:
    mark = exc.problem_mark or exc.context_mark
    line = mark.line + 1 if mark else None
    col = mark.column + 1 if mark else None
    return Problem(Location(file, line, col, None), f"invalid YAML: {exc.problem or exc}")


class YamlProblem(Exception):
    def __init__(self, problem: Problem) -> None:
        super().__init__(str(problem))
        self.problem = problem


def read_text(path: Path) -> str:
    return path.read_text(encoding="utf-8")
