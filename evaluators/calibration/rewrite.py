"""The calibrated policy version: the original YAML text with only the fitted values edited."""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from evaluators.calibration.errors import CalibrationError
from evaluators.calibration.fitting import Target
from evaluators.calibration.run import CalibrationResult
from evaluators.errors import PolicyError
from evaluators.policy import Calibration, LoadedPolicy, parse_policy

CALIBRATION_HEADER = "# Written by `assay calibrate`"


def next_version(version: str) -> str:
    """``1.0.0`` -> ``1.0.0+cal1``; ``1.0.0+cal1`` -> ``1.0.0+cal2``.

    A build-metadata suffix keeps the version people manage and marks the file
    as derived from it; a second calibration of a calibrated file counts up.
    """
    m = re.fullmatch(r"(.*)\+cal(\d+)", version)
    return f"{m.group(1)}+cal{int(m.group(2)) + 1}" if m else f"{version}+cal1"


def default_output(path: Path) -> Path:
    return path.with_name(f"{path.stem}-calibrated{path.suffix or '.yaml'}")


@dataclass(frozen=True)
class _Edit:
    start: int
    end: int
    text: str


class _FlowListDumper(yaml.SafeDumper):
    """Short lists of scalars (intervals) in flow style; everything else in block style."""


def _represent_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
    flow = all(not isinstance(x, dict | list) for x in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_FlowListDumper.add_representer(list, _represent_list)


def _flow(value: Any) -> str:
    """``value`` as one line of YAML (a flow mapping for dicts)."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float | int):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    dumped = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=1 << 20)
    return dumped.strip()


def _child(node: yaml.Node, key: str | int) -> tuple[yaml.Node, yaml.Node] | None:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value == str(key):
                return k, v
        return None
    if isinstance(node, yaml.SequenceNode) and isinstance(key, int) and 0 <= key < len(node.value):
        return node.value[key], node.value[key]
    return None


def _line_start(text: str, index: int) -> int:
    return text.rfind("\n", 0, index) + 1


def _insert_key(text: str, mapping: yaml.MappingNode, key: str, value: Any) -> _Edit:
    """Add ``key: value`` to a mapping in the text, in the mapping's own style."""
    entry = f"{key}: {_flow(value)}"
    if mapping.flow_style:
        at = mapping.start_mark.index + 1  # just after "{"
        return _Edit(at, at, entry + (", " if mapping.value else ""))
    if not mapping.value:
        raise CalibrationError(
            f"cannot add {key!r} to an empty block mapping at line {mapping.start_mark.line + 1}"
        )
    indent = mapping.value[0][0].start_mark.column
    if isinstance(value, dict) and value:
        # A nested block reads better than one long flow line; each entry stays on one line.
        pad = " " * (indent + 2)
        entry = f"{key}:\n" + "\n".join(f"{pad}{k}: {_flow(v)}" for k, v in value.items())
    end = mapping.value[-1][1].end_mark.index
    start = _line_start(text, end)
    if text[start:end].strip() == "":
        # The last value ends where the next line's token begins (nested block): insert before that line.
        at = start
    else:
        newline = text.find("\n", end)
        if newline < 0:
            return _Edit(len(text), len(text), "\n" + " " * indent + entry + "\n")
        at = newline + 1
    return _Edit(at, at, " " * indent + entry + "\n")


def _set_at(text: str, root: yaml.Node, path: Sequence[str | int], intended: Any) -> _Edit:
    """The edit that gives ``path`` its value in ``intended`` (the whole intended policy, as JSON)."""
    node = root
    for depth, part in enumerate(path):
        found = _child(node, part)
        if found is None:
            if isinstance(node, yaml.MappingNode) and isinstance(part, str):
                return _insert_key(text, node, part, _get(intended, path[: depth + 1]))
            raise CalibrationError(f"cannot find {'.'.join(map(str, path))} in the policy text to edit")
        node = found[1]
        if depth < len(path) - 1 and isinstance(node, yaml.ScalarNode):
            if node.tag != "tag:yaml.org,2002:null":
                raise CalibrationError(f"{'.'.join(map(str, path[: depth + 1]))} is not a mapping")
            # An explicit null container (``labels: null`` or ``labels:``) becomes the intended mapping.
            value = _flow(_get(intended, path[: depth + 1]))
            empty = node.start_mark.index == node.end_mark.index
            return _Edit(node.start_mark.index, node.end_mark.index, (" " if empty else "") + value)
    if not isinstance(node, yaml.ScalarNode):
        raise CalibrationError(f"{'.'.join(map(str, path))} is not a scalar in the policy text")
    return _Edit(node.start_mark.index, node.end_mark.index, _flow(_get(intended, path)))


def _get(data: Any, path: Sequence[str | int]) -> Any:
    for part in path:
        data = data[part]
    return data


def _set(data: Any, path: Sequence[str | int], value: Any) -> None:
    _get(data, path[:-1])[path[-1]] = value


def _calibration_block(record: Calibration, target: Target) -> str:
    body = yaml.dump(
        {"calibration": record.model_dump(mode="json")},
        Dumper=_FlowListDumper,
        sort_keys=False,
        default_flow_style=False,
        width=100,
        allow_unicode=True,
    )
    return (
        f"{CALIBRATION_HEADER} (target {target}): the thresholds listed here were fitted on\n"
        "# the labelled data named below; before/after are measured on those same examples, held_out by\n"
        "# cross-validation. Editing a listed threshold by hand makes this record stale (a policy error).\n"
        + body
    )


def render_calibrated(result: CalibrationResult, out: Path, *, version: str | None = None) -> str:
    """The new policy text: the original with thresholds, version and calibration record edited.

    Raises ``CalibrationError`` when the edited text does not validate or does
    not load as exactly the intended policy.
    """
    loaded = result.policy
    text = loaded.path.read_text(encoding="utf-8")
    if hashlib.sha256(text.encode("utf-8")).hexdigest() != loaded.sha256:
        raise CalibrationError(f"{loaded.path} changed while calibrating; run again")
    new_version = version or next_version(loaded.policy.version)
    if len(new_version) > 32:
        raise CalibrationError(f"version {new_version!r} is longer than 32 characters; pass --version")
    record = result.record()
    intended = loaded.policy.model_dump(mode="json")
    for r in result.labels:
        base = [r.field.stage, r.field.index]
        if r.changed and r.field.fill and _get(intended, [*base, *r.field.fill]) is None:
            if not r.fill_rules:
                raise CalibrationError(f"internal error: no observed rules to write for {r.field.dotted}")
            _set(intended, [*base, *r.field.fill], json.loads(json.dumps(r.fill_rules)))
        if r.changed:
            _set(intended, [*base, *r.field.path], r.after.threshold)
    intended["version"] = new_version
    intended["calibration"] = record.model_dump(mode="json")

    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if not isinstance(root, yaml.MappingNode) or root.flow_style:
        raise CalibrationError(f"{loaded.path}: only a block-style top-level mapping can be edited in place")
    edits = [
        _set_at(text, root, [r.field.stage, r.field.index, *r.field.path], intended)
        for r in result.labels
        if r.changed
    ]
    edits.append(_set_at(text, root, ["version"], intended))
    block = _calibration_block(record, result.target)
    existing = _child(root, "calibration")
    if existing is not None:
        key, value = existing
        end = value.end_mark.index
        # A block value ends where the next token begins; keep that line's indentation.
        end = _line_start(text, end) if text[_line_start(text, end) : end].strip() == "" else end
        start = key.start_mark.index
        # Replace our own header comment too, so it names the new target.
        header = text.rfind(CALIBRATION_HEADER, 0, start)
        if header >= 0 and text[header:start].count("\n") == 3:
            start = header
        edits.append(_Edit(start, end, block))
    else:
        edits.append(_Edit(len(text), len(text), ("\n" if text.endswith("\n") else "\n\n") + block))
    # Two labels filling one null container make the same edit; keep it once. Inserts at one
    # position keep the order they were made in (mapping keys before the calibration block).
    unique = list(dict.fromkeys(edits))
    ordered = sorted(enumerate(unique), key=lambda pair: (pair[1].start, pair[1].end, pair[0]))
    for (_, a), (_, b) in itertools.pairwise(ordered):
        if a.end > b.start:
            raise CalibrationError("internal error: overlapping edits of the policy text")
    new_text = text
    for _, e in reversed(ordered):
        new_text = new_text[: e.start] + e.text + new_text[e.end :]

    try:
        written = parse_policy(new_text, str(out))
    except PolicyError as exc:
        raise CalibrationError(
            "internal error: the calibrated policy does not validate:\n" + "\n".join(map(str, exc.problems))
        ) from exc
    actual = written.policy.model_dump(mode="json")
    if actual != intended:
        diff = _first_difference(intended, actual)
        raise CalibrationError(
            f"internal error: the edited policy text does not load as intended (at {diff}); "
            "the file uses YAML the editor does not handle (anchors?)"
        )
    return new_text


def _first_difference(a: Any, b: Any, path: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if a.get(k) != b.get(k):
                return _first_difference(a.get(k), b.get(k), f"{path}.{k}" if path else str(k))
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            if x != y:
                return _first_difference(x, y, f"{path}.{i}")
    return path or "top level"


def write_calibrated(
    result: CalibrationResult, out: Path, *, version: str | None = None, overwrite: bool = False
) -> LoadedPolicy:
    """Write the new policy version to ``out`` and load it back with the normal loader."""
    from evaluators.policy import load_policy_file

    if out.resolve() == result.policy.path.resolve():
        raise CalibrationError(f"{out} is the policy being calibrated; write the new version elsewhere")
    if out.exists() and not overwrite:
        raise CalibrationError(f"{out} exists; pass --force to overwrite it")
    text = render_calibrated(result, out, version=version)
    out.write_text(text, encoding="utf-8")
    return load_policy_file(out)
