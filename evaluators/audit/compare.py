"""What changed from one audit run to another: per metric, per gate, and what regressed.

Reads two run records (``record.py``); ``render.render_compare_html`` draws the result.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# A change smaller than this is "same": rates are k/n, and reruns of a gap's bootstrap agree.
SAME_TOLERANCE = 1e-9


def compare(run_a: Mapping[str, Any], run_b: Mapping[str, Any]) -> dict[str, Any]:
    """Metric-by-metric and gate-by-gate change from ``run_a`` (baseline) to ``run_b`` (candidate).

    Every metric is lower-is-better (rates of bad outcomes, gaps between groups).
    ``significant`` is true when the two 95% intervals do not overlap: a strict test,
    so a "worse" without it may be noise.
    """
    metrics_a, metrics_b = run_a.get("metrics") or {}, run_b.get("metrics") or {}
    out_metrics: dict[str, dict[str, Any]] = {}
    for name in sorted(set(metrics_a) | set(metrics_b)):
        a, b = metrics_a.get(name) or {}, metrics_b.get(name) or {}
        va, vb = a.get("value"), b.get("value")
        entry: dict[str, Any] = {"a": va, "b": vb, "delta": None, "change": "n/a", "significant": None}
        if va is not None and vb is not None:
            delta = float(vb) - float(va)
            entry["delta"] = delta
            entry["change"] = "same" if abs(delta) <= SAME_TOLERANCE else ("worse" if delta > 0 else "better")
            ca, cb = a.get("ci"), b.get("ci")
            if ca and cb:
                entry["significant"] = bool(cb[0] > ca[1] or cb[1] < ca[0])
        out_metrics[name] = entry
    gates_a = {g["gate"]: g for g in run_a.get("gates") or []}
    gates_b = {g["gate"]: g for g in run_b.get("gates") or []}
    out_gates = []
    for gate in [*gates_a, *(g for g in gates_b if g not in gates_a)]:
        pa = gates_a[gate]["passed"] if gate in gates_a else None
        pb = gates_b[gate]["passed"] if gate in gates_b else None
        if pa is None:
            change = "added"
        elif pb is None:
            change = "removed"
        elif pa == pb:
            change = "same"
        else:
            change = "regressed" if pa and not pb else "fixed"
        out_gates.append({"gate": gate, "a": pa, "b": pb, "change": change})
    warnings = []
    sa, sb = run_a.get("suite") or {}, run_b.get("suite") or {}
    if sa.get("sha256") != sb.get("sha256"):
        warnings.append("the runs used different suites (sha256 differs): metrics may not be comparable")
    if run_a.get("samples_per_prompt") != run_b.get("samples_per_prompt"):
        warnings.append("the runs used different samples_per_prompt")
    return {
        "a": _summary(run_a),
        "b": _summary(run_b),
        "same_suite": sa.get("sha256") == sb.get("sha256"),
        "metrics": out_metrics,
        "gates": out_gates,
        "verdict": {"a": run_a.get("verdict"), "b": run_b.get("verdict")},
        "regressions": sorted(
            [n for n, m in out_metrics.items() if m["change"] == "worse"]
            + [g["gate"] for g in out_gates if g["change"] == "regressed"]
        ),
        "warnings": warnings,
    }


def _summary(run: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": run.get("id"),
        "suite": (run.get("suite") or {}).get("name"),
        "suite_sha256": (run.get("suite") or {}).get("sha256"),
        "model": (run.get("model") or {}).get("id"),
        "policy": (run.get("policy") or {}).get("name"),
        "finished_at": run.get("finished_at"),
        "verdict": run.get("verdict"),
    }
