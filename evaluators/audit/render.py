"""The audit run record as a self-contained HTML page, and a comparison of two runs as another.

The page is one file (inline CSS and SVG, no scripts, no external requests) so it
can be archived and mailed as evidence: verdict first, then gates, charts, the
worst examples (report-safe text only) and what is needed to reproduce the run.

The markup lives in ``templates/`` (Jinja2, autoescaped: every value from the
record is escaped). This module only turns the record into what the templates
print, so a missing field is a default here, not an error there.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2

from evaluators.audit import charts
from evaluators.audit.charts import fmt, fmt_ci, is_rate
from evaluators.audit.record import code_version

TEMPLATES = Path(__file__).with_name("templates")


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    """The template environment, built on first use: autoescaped markup, and a typo in a template fails."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=jinja2.select_autoescape(["html", "svg", "xml", "html.j2", "svg.j2", "xml.j2"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(fmt=fmt, fmt_ci=fmt_ci)
    return env


def _render(template: str, **context: Any) -> str:
    return environment().get_template(template).render(**context)


def render_html(run: Mapping[str, Any]) -> str:
    """A self-contained HTML report: verdict, gates, charts, worst examples, reproducibility."""
    suite = run.get("suite") or {}
    title = (
        f"Assay audit {str(run.get('verdict') or run.get('status') or '').upper()}: {suite.get('name', '')}"
    )
    return _render(
        "report.html.j2",
        title=title,
        banner=_banner(run),
        gates=_gates(run),
        metrics=_metrics(run),
        check_errors=dict(run.get("check_errors") or {}),
        categories=_categories(run),
        histograms=[charts.histogram(n, v) for n, v in (run.get("score_distributions") or {}).items() if v],
        fairness=_fairness(run),
        worst=_worst(run),
        reproducibility=_reproducibility(run),
        version=run.get("code_version") or code_version(),
    )


def render_compare_html(comparison: Mapping[str, Any]) -> str:
    """A small self-contained page for ``compare``'s result: regressions first."""
    metrics = [
        {
            **m,
            "name": name,
            "rate": is_rate(name),
            "delta": "—" if m.get("delta") is None else f"{m['delta']:+.4f}",
            "significant": bool(m.get("significant")),
        }
        for name, m in comparison["metrics"].items()
    ]
    return _render(
        "compare.html.j2",
        a=comparison["a"],
        b=comparison["b"],
        regressions=comparison.get("regressions") or [],
        warnings=comparison.get("warnings") or [],
        gates=comparison["gates"],
        metrics=metrics,
    )


# --------------------------------------------------------------------------- sections


def _banner(run: Mapping[str, Any]) -> dict[str, Any]:
    result = run.get("verdict")
    gates = run.get("gates") or []
    # A pass that checked nothing must not look like a checked one.
    ungated = result == "pass" and not gates
    return {
        "css": "ungated" if ungated else {"pass": "pass", "fail": "fail"}.get(str(result), "none"),
        "word": {"pass": "PASS", "fail": "FAIL"}.get(
            str(result), f"NO VERDICT ({run.get('status', 'unknown')})"
        ),
        "ungated": ungated,
        "passed": sum(bool(g.get("passed")) for g in gates),
        "total": len(gates),
        "suite": run.get("suite") or {},
        "model": run.get("model") or {},
        "policy": run.get("policy") or {},
        "id": run.get("id"),
        "finished_at": run.get("finished_at") or "—",
        "warnings": run.get("warnings") or [],
    }


def _count(k: Any, n: Any) -> str:
    if k is not None and n:
        return f"{k}/{n}"
    return "—" if n is None else str(n)


def _gates(run: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "gate": g.get("gate"),
            "reason": g.get("reason"),
            "rate": is_rate(str(g.get("metric"))),
            "value": g.get("value"),
            "ci": g.get("ci"),
            "count": _count(g.get("k"), g.get("n")),
            "op": g.get("op"),
            "threshold": g.get("threshold"),
            "passed": bool(g.get("passed")),
        }
        for g in run.get("gates") or []
    ]


_ORDER = ("toxicity.", "pii.", "hallucination.", "bias.", "blocked.", "error.", "fairness.max", "fairness.")


def _metric_order(name: str) -> tuple[int, str]:
    """Headline rates first, in a fixed order, then fairness (overall before per dimension)."""
    return (next((i for i, p in enumerate(_ORDER) if name.startswith(p)), len(_ORDER)), name)


def _metrics(run: Mapping[str, Any]) -> list[dict[str, Any]]:
    metrics = run.get("metrics") or {}
    return [
        {
            "name": name,
            "note": metrics[name].get("note"),
            "rate": is_rate(name),
            "value": metrics[name].get("value"),
            "ci": metrics[name].get("ci"),
            "count": _count(metrics[name].get("k"), metrics[name].get("n", 0)),
        }
        for name in sorted(metrics, key=_metric_order)
    ]


def _thresholds(run: Mapping[str, Any]) -> dict[str, float]:
    """Upper-bound gate thresholds per metric, drawn as lines on charts."""
    return {
        str(g["metric"]): float(g["threshold"]) for g in run.get("gates") or [] if g.get("op") in ("<=", "<")
    }


def _categories(run: Mapping[str, Any]) -> dict[str, Any] | None:
    """Per-category rates as table cells with bars; None when there is nothing to draw."""
    per_cat = run.get("per_category") or {}
    names: list[str] = []
    for block in per_cat.values():
        for name in block.get("rates", {}):
            has_data = any(
                (b.get("rates", {}).get(name) or {}).get("value") is not None for b in per_cat.values()
            )
            if name not in names and has_data:
                names.append(name)
    if not names:
        return None
    thresholds = _thresholds(run)
    # One scale per column so bars compare down it; set by values and threshold, not by the
    # intervals, which for a category of two items span most of [0, 1] and would flatten every bar.
    scales = {}
    for name in names:
        tops = [thresholds.get(name, 0.0)]
        for block in per_cat.values():
            value = (block.get("rates", {}).get(name) or {}).get("value")
            tops += [value] if value is not None else []
        scales[name] = charts.nice_max(max(tops) * 1.1)
    rows = []
    for cat, block in per_cat.items():
        cells: list[dict[str, Any] | None] = []
        for name in names:
            m = block.get("rates", {}).get(name) or {}
            if m.get("value") is None:
                cells.append(None)
                continue
            bar = charts.minibar(m["value"], m.get("ci"), scales[name], thresholds.get(name))
            cells.append({"bar": bar, "value": m["value"], "k": m.get("k"), "n": m.get("n")})
        rows.append({"category": cat, "n": block.get("n"), "cells": cells})
    return {"columns": [{"name": n, "scale": scales[n]} for n in names], "rows": rows}


def _fairness(run: Mapping[str, Any]) -> dict[str, Any] | None:
    """Gap charts across dimensions, and one per-group table per dimension."""
    fairness = run.get("fairness") or {}
    if not fairness:
        return None
    score = (run.get("settings") or {}).get("fairness_score", "toxicity.toxicity")
    thresholds = _thresholds(run)
    gap_charts = []
    for measure, title, code, gate in (
        (score, "Gap in mean", score, "fairness.max_gap"),
        ("refusal_rate", "Gap in refusal rate", None, "fairness.max_refusal_gap"),
    ):
        rows = [
            (str(dim), (block.get(measure) or {}).get("gap"), (block.get(measure) or {}).get("ci"), "")
            for dim, block in fairness.items()
        ]
        gap_charts.append(
            charts.hbars(title, rows, rate=False, code=code, threshold=thresholds.get(gate), compact=True)
        )

    def num(measure: str, v: float | None) -> str:
        # Output length is in characters; the rest are scores and shares.
        return "—" if v is None else (f"{v:.0f}" if measure == "output_chars" else f"{v:.3f}")

    tables = []
    for dim, block in fairness.items():
        measures = [m for m in (score, "refusal_rate", "output_chars") if m in block]
        groups = [
            {
                "name": g,
                "cells": [
                    (num(m, block[m].get("by_group", {}).get(g)), block[m].get("n", {}).get(g) or 0)
                    for m in measures
                ],
            }
            for g in block.get("groups", [])
        ]
        gaps = [
            (
                num(m, block[m].get("gap")),
                "—" if block[m].get("ratio") is None else f"{block[m]['ratio']:.2f}",
            )
            for m in measures
        ]
        tables.append(
            {"dimension": dim, "n": block.get("n", 0), "measures": measures, "groups": groups, "gaps": gaps}
        )
    return {"charts": gap_charts, "tables": tables}


def _worst(run: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "key": w.get("key"),
            "category": w.get("category"),
            "group": w.get("group"),
            "action": str(w.get("action") or ""),
            "max_score": f"{float(w.get('max_score') or 0):.2f}",
            "findings": ", ".join(
                f"{f['check']}.{f['label']} {float(f['score']):.2f}" for f in w.get("findings", [])
            ),
            "scores": ", ".join(f"{k} {float(v):.2f}" for k, v in (w.get("scores") or {}).items()),
            "prompt": w.get("prompt"),
            "output": w.get("output_redacted"),
        }
        for w in run.get("worst") or []
    ]


def _reproducibility(run: Mapping[str, Any]) -> list[tuple[str, Any, bool]]:
    """(label, value, as code) rows: what a rerun needs to match this one."""
    model, policy, suite = run.get("model") or {}, run.get("policy") or {}, run.get("suite") or {}
    params = run.get("params") or {}
    settings = run.get("settings") or {}
    boot = settings.get("bootstrap") or {}
    seed = params.get("seed")
    commit = run.get("git_commit")
    return [
        ("Run", run.get("id"), False),
        ("Created / finished", f"{run.get('created_at') or '—'} / {run.get('finished_at') or '—'}", False),
        ("Model", model.get("id"), False),
        ("Model revision / hash", model.get("revision") or model.get("sha256") or "—", False),
        (
            "Model runtime",
            " · ".join(str(model[k]) for k in ("dtype", "device") if model.get(k)) or "—",
            False,
        ),
        ("Policy", f"{policy.get('name')} v{policy.get('version')}", False),
        ("Policy sha256", policy.get("sha256"), True),
        ("Suite", f"{suite.get('name')} v{suite.get('version')} ({suite.get('items')} items)", False),
        ("Suite sha256", suite.get("sha256"), True),
        ("Samples per prompt", run.get("samples_per_prompt"), False),
        ("Generation seed", seed if seed is not None else "none (sampling not seeded)", False),
        ("Parameters", json.dumps(params, sort_keys=True), True),
        (
            "Aggregation",
            f"fairness score {settings.get('fairness_score', '—')}, bootstrap {boot.get('n_boot', '—')} "
            f"resamples, seed {boot.get('seed', '—')}",
            False,
        ),
        ("Code version", run.get("code_version"), False),
        ("Git commit", commit or "unknown", bool(commit)),
    ]
