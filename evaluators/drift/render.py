"""A drift report as one self-contained HTML page, in the audit report's style.

Verdict first; then every signal with its statistics against their thresholds;
then a chart per signal (drifting ones first), the window drawn over the
baseline. Inline CSS and SVG, no scripts, nothing fetched. The markup lives in
``templates/drift.html.j2`` (autoescaped) and reuses the audit report's page
shell and stylesheet; this module only computes chart geometry.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2

from evaluators.audit.charts import Tick
from evaluators.audit.record import code_version
from evaluators.audit.render import TEMPLATES as AUDIT_TEMPLATES
from evaluators.contracts.drift import DriftReport, SignalResult, Statistic

TEMPLATES = Path(__file__).with_name("templates")
BASE = "#8c959f"
WINDOW = "#4269d0"


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader(
            [jinja2.FileSystemLoader(TEMPLATES), jinja2.FileSystemLoader(AUDIT_TEMPLATES)]
        ),
        autoescape=jinja2.select_autoescape(["html", "svg", "html.j2", "svg.j2"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = _num
    return env


def _num(value: float | None) -> str:
    if value is None:
        return "—"
    if value != 0 and abs(value) < 0.001:
        return f"{value:.1e}"
    return f"{value:.3f}"


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    w: float
    h: float
    fill: str
    title: str


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    bars: list[Bar]
    labels: list[Tick]
    points: list[tuple[float, float, str]]
    axis: tuple[float, float, float, float] | None
    caption: str


def _r(v: float) -> float:
    return round(float(v), 1)


def _bins_chart(chart: dict[str, Any], unit: str) -> Chart:
    """Paired bars per bin: baseline (grey) and window (blue), as shares of each side."""
    base, cur, edges = chart["baseline"], chart["window"], chart["edges"]
    width, height, left, top, bottom = 340, 160, 34, 8, 24
    plot_w, plot_h = width - left - 8, height - top - bottom
    peak = max([*base, *cur, 1e-9])
    bw = plot_w / len(base)
    bars: list[Bar] = []
    for i, (b, c) in enumerate(zip(base, cur, strict=True)):
        span = f"{edges[i]:g}–{edges[i + 1]:g}{unit}"
        for j, (v, fill, side) in enumerate(((b, BASE, "baseline"), (c, WINDOW, "window"))):
            h = plot_h * v / peak
            bars.append(
                Bar(
                    _r(left + i * bw + j * bw / 2),
                    _r(top + plot_h - h),
                    _r(bw / 2 - 0.5),
                    _r(h),
                    fill,
                    f"{side} {span}: {v:.1%}",
                )
            )
    n = len(edges) - 1
    labels = [Tick(_r(left + k * plot_w / n), height - 8, f"{edges[k]:g}") for k in (0, n // 2, n)]
    labels += [Tick(left - 4, top + 9, f"{peak:.0%}", "end"), Tick(left - 4, top + plot_h, "0", "end")]
    return Chart(width, height, bars, labels, [], (left, top, plot_w, plot_h), "")


def _mix_chart(chart: dict[str, Any]) -> Chart:
    cats, base, cur = chart["categories"][:12], chart["baseline"][:12], chart["window"][:12]
    label_w, bar_w, row_h, top = 130, 200, 22, 4
    width, height = label_w + bar_w + 90, top + row_h * len(cats) + 6
    peak = max([*base, *cur, 1e-9])
    bars, labels = [], []
    for i, (k, b, c) in enumerate(zip(cats, base, cur, strict=True)):
        y = top + i * row_h
        labels.append(Tick(label_w - 6, y + 15, k if len(k) <= 20 else k[:19] + "…", "end"))
        bars.append(Bar(label_w, y + 3, _r(max(bar_w * b / peak, 0.5)), 7, BASE, f"baseline {k}: {b:.1%}"))
        bars.append(Bar(label_w, y + 11, _r(max(bar_w * c / peak, 0.5)), 7, WINDOW, f"window {k}: {c:.1%}"))
        labels.append(Tick(label_w + bar_w + 6, y + 15, f"{b:.0%} → {c:.0%}", "start"))
    return Chart(width, height, bars, labels, [], None, "")


def _scatter_chart(chart: dict[str, Any]) -> Chart:
    size, pad = 220, 10
    half = (size - 2 * pad) / 2

    def place(points: list[list[float]], fill: str) -> list[tuple[float, float, str]]:
        return [(_r(pad + half + x * half), _r(pad + half - y * half), fill) for x, y in points]

    points = place(chart["baseline"], BASE) + place(chart["window"], WINDOW)
    return Chart(size, size, [], [], points, None, "first two principal components of the sampled embeddings")


def _chart(signal: SignalResult) -> Chart | None:
    c = signal.chart
    if not c:
        return None
    if c.get("type") == "bins":
        return _bins_chart(c, " chars" if signal.kind == "length" else "")
    if c.get("type") == "mix":
        return _mix_chart(c) if c.get("categories") else None
    if c.get("type") == "scatter":
        return _scatter_chart(c)
    return None


def _statistic(s: Statistic) -> dict[str, Any]:
    return {
        "name": s.name.upper() if s.name != "mmd" else "MMD²",
        "value": s.value,
        "threshold": s.threshold,
        "p_value": s.p_value,
        "verdict": s.verdict,
    }


def _when(info: dict[str, Any]) -> str:
    if info.get("audit"):
        return f"audit run {info['audit']}"
    start, end = info.get("from"), info.get("to")
    text = f"{start} → {end}" if start and end else "—"
    return f"{info['name']}: {text}" if info.get("name") else text


def render_html(report: DriftReport) -> str:
    """The report as one HTML page: verdict, signals table, a chart per signal."""
    word = {"drift": "DRIFT", "ok": "NO DRIFT", "insufficient_data": "NOT ENOUGH DATA"}[report.verdict]
    css = {"drift": "fail", "ok": "pass", "insufficient_data": "none"}[report.verdict]
    signals = [
        {
            "name": s.name,
            "kind": s.kind,
            "verdict": s.verdict,
            "n_baseline": s.n_baseline,
            "n_window": s.n_window,
            "statistics": [_statistic(x) for x in s.statistics],
            "detail": s.detail,
            "chart": _chart(s),
        }
        for s in report.signals
    ]
    return (
        environment()
        .get_template("drift.html.j2")
        .render(
            title=f"Assay drift {word}: {report.policy}",
            word=word,
            css=css,
            report=report,
            drifted=list(report.drifted),
            baseline=_when(report.baseline),
            window=_when(report.window),
            baseline_events=report.baseline.get("events", {}),
            window_events=report.window.get("events", {}),
            signals=signals,
            colors={"baseline": BASE, "window": WINDOW},
            version=code_version(),
        )
    )
