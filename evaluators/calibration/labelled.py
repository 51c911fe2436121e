"""The labelled CSV: texts, their stage, and 0/1 labels per ``check.label`` column."""

from __future__ import annotations

import csv
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from evaluators.calibration.errors import LabelledDataError
from evaluators.errors import Location, Problem

Stage = Literal["input", "output"]
STAGES: tuple[Stage, ...] = ("input", "output")
RESERVED_COLUMNS = ("text", "stage", "id")


@dataclass(frozen=True)
class LabelledRow:
    line: int
    text: str
    stage: Stage
    labels: dict[str, int]
    """Column -> 0 or 1; empty cells (not labelled for that column) are left out."""


@dataclass(frozen=True)
class LabelledData:
    file: str
    sha256: str
    columns: tuple[str, ...]
    """The label columns (``check.label``), in file order."""
    rows: tuple[LabelledRow, ...]


MAX_PROBLEMS = 20


def read_labelled_csv(path: Path) -> LabelledData:
    """Read and check a labelled CSV; every problem names file, line and column.

    Columns: ``text`` (required), ``stage`` (input or output; default output),
    ``id`` (ignored), and one or more ``check.label`` columns of 0 or 1. An
    empty label cell means "not labelled for this column".
    """
    file = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise LabelledDataError([Problem(Location(file), f"cannot read: {exc.strerror}")]) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LabelledDataError([Problem(Location(file), f"not UTF-8: {exc}")]) from None
    reader = csv.reader(text.splitlines(keepends=True))
    problems: list[Problem] = []
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise LabelledDataError([Problem(Location(file), "empty file: expected a header row")]) from None
    except csv.Error as exc:
        raise LabelledDataError([Problem(Location(file, 1), f"bad CSV: {exc}")]) from None

    def col(name: str) -> int | None:
        return header.index(name) + 1 if name in header else None

    for i, name in enumerate(header, start=1):
        if header.count(name) > 1 and header.index(name) + 1 == i:
            problems.append(Problem(Location(file, 1, i, name or None), f"column {name!r} appears twice"))
        elif name not in RESERVED_COLUMNS and not re.fullmatch(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_.-]+", name):
            problems.append(
                Problem(
                    Location(file, 1, i, name or None),
                    f"column {name!r} is not a label: label columns are named check.label "
                    "(e.g. toxicity.insult, pii.PERSON); other columns allowed: "
                    + ", ".join(RESERVED_COLUMNS),
                )
            )
    if col("text") is None:
        problems.append(Problem(Location(file, 1, None, "text"), "missing column 'text'"))
    columns = tuple(h for h in header if h not in RESERVED_COLUMNS)
    if not columns:
        problems.append(
            Problem(Location(file, 1), "no label columns: add one or more check.label columns of 0/1")
        )
    if problems:
        raise LabelledDataError(problems)

    rows: list[LabelledRow] = []
    try:
        for record in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in record):
                continue  # blank line
            if len(record) != len(header):
                problems.append(
                    Problem(Location(file, line), f"{len(record)} cells, but the header has {len(header)}")
                )
                continue
            cells = dict(zip(header, record, strict=True))
            stage = cells.get("stage", "").strip() or "output"
            if stage not in STAGES:
                problems.append(
                    Problem(
                        Location(file, line, col("stage"), "stage"),
                        f"stage {stage!r} is not input or output",
                    )
                )
            labels: dict[str, int] = {}
            for name in columns:
                value = cells[name].strip()
                if value == "":
                    continue
                if value not in ("0", "1"):
                    problems.append(
                        Problem(Location(file, line, col(name), name), f"label {value!r} is not 0 or 1")
                    )
                    continue
                labels[name] = int(value)
            if not labels:
                problems.append(Problem(Location(file, line), "no label in this row"))
            rows.append(LabelledRow(line, cells["text"], "input" if stage == "input" else "output", labels))
            if len(problems) >= MAX_PROBLEMS:
                break
    except csv.Error as exc:
        problems.append(Problem(Location(file, reader.line_num), f"bad CSV: {exc}"))
    if not rows and not problems:
        problems.append(Problem(Location(file, 2), "no data rows"))
    if problems:
        raise LabelledDataError(problems)
    return LabelledData(file, hashlib.sha256(raw).hexdigest(), columns, tuple(rows))
