"""The audit run record: one plain dict every report renderer reads.

Built where a run finishes (a worker) and stored with the run, so reports can
be re-rendered later without models. Its shape is ``report.schema.json`` beside
this module (``report_schema()``); ``render.py`` and ``junit.py`` render it as
HTML and JUnit, ``render_json`` as strict JSON.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import subprocess
from collections.abc import Mapping, Sequence
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

from evaluators.audit.aggregate import AuditMetrics
from evaluators.audit.gates import GateResult, gate_warnings, verdict
from evaluators.audit.suites import LoadedSuite

SCHEMA_VERSION = "1"
SCHEMA_PATH = Path(__file__).with_name("report.schema.json")
# The repository root, where ``git rev-parse`` runs.
ROOT = Path(__file__).resolve().parents[2]


def report_schema() -> dict[str, Any]:
    """The JSON Schema of the run record (shipped as package data)."""
    schema: dict[str, Any] = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    return schema


# --------------------------------------------------------------------------- record


def code_version() -> str:
    try:
        return metadata.version("assay")
    except metadata.PackageNotFoundError:
        return "dev"


@lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit this code runs from: ASSAY_GIT_COMMIT (images have no .git), else git, else None."""
    env = os.environ.get("ASSAY_GIT_COMMIT")
    if env:
        return env
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=2, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit or None


def _iso(value: str | dt.datetime | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.isoformat()


def build_run_record(
    *,
    run_id: str,
    suite: LoadedSuite,
    audit: AuditMetrics,
    gates: Sequence[GateResult],
    model: Mapping[str, Any],
    policy: Mapping[str, Any],
    params: Mapping[str, Any],
    samples_per_prompt: int,
    status: str = "finished",
    created_at: str | dt.datetime | None = None,
    finished_at: str | dt.datetime | None = None,
    progress: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """The run record every renderer reads. ``verdict`` is set only for a finished run.

    ``progress`` defaults to the items aggregated out of the items the suite expands
    to; a finished run with fewer done than expected gets a warning, since its
    metrics describe part of the suite.
    """
    total = len(suite.expand(samples_per_prompt))
    progress = dict(progress) if progress is not None else {"done": audit.counts["items"], "total": total}
    warnings = gate_warnings(gates)
    if status == "finished" and progress["done"] < progress["total"]:
        warnings.append(
            f"only {progress['done']} of {progress['total']} work items have results: "
            "metrics cover part of the suite"
        )
    record = {
        "schema_version": SCHEMA_VERSION,
        "id": run_id,
        "status": status,
        "created_at": _iso(created_at),
        "finished_at": _iso(finished_at),
        "suite": {**suite.identity(), "description": suite.suite.description},
        "model": dict(model),
        "policy": {
            "name": policy.get("name"),
            "version": policy.get("version"),
            "sha256": policy.get("sha256"),
        },
        "params": dict(params),
        "samples_per_prompt": samples_per_prompt,
        **audit.to_dict(),
        "gates": [g.to_dict() for g in gates],
        "verdict": verdict(gates) if status == "finished" else None,
        "warnings": warnings,
        "progress": progress,
        "code_version": code_version(),
        "git_commit": git_commit(),
    }
    return render_json(record)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=str) if isinstance(value, set | frozenset) else value
        return [_jsonable(v) for v in items]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dt.datetime):
        return _iso(value)
    if isinstance(value, str | int | bool) or value is None:
        return value
    if hasattr(value, "item"):  # numpy scalars
        return _jsonable(value.item())
    return str(value)


def render_json(run: Mapping[str, Any]) -> dict[str, Any]:
    """The machine-readable record: plain JSON types only, NaN and infinities as null."""
    out = _jsonable(run)
    out.setdefault("schema_version", SCHEMA_VERSION)
    return out
