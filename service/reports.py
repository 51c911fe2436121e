"""Audit run reports: the run record, and its JSON, HTML, JUnit and comparison renderings.

``build_run_record`` assembles one plain dict (the *run record*) from a loaded
suite, ``aggregate``'s metrics and the gate results; every renderer reads only
that dict, so a stored run can be re-rendered without the models. Its shape is
``service/report.schema.json``.

The HTML report is one self-contained file (inline CSS and SVG, no scripts, no
external requests) so it can be archived and mailed as evidence: verdict first,
then gates, charts, the worst examples (report-safe text only) and what is needed
to reproduce the run.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

# The record is built in evaluators/ (workers finalize runs); re-exported for renderers' callers.
from evaluators.report_record import SCHEMA_VERSION as SCHEMA_VERSION
from evaluators.report_record import build_run_record as build_run_record
from evaluators.report_record import code_version
from evaluators.report_record import render_json as render_json

SCHEMA_PATH = Path(__file__).with_name("report.schema.json")


def report_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    return schema


# --------------------------------------------------------------------------- formatting


def _is_rate(name: str) -> bool:
    return name.endswith("rate")


def _fmt(value: float | None, rate: bool) -> str:
    if value is None:
        return "n/a"
    if rate:
        pct = value * 100
        if pct == round(pct):
            return f"{pct:.0f}%"
        return f"{pct:.1f}%" if pct >= 1 else f"{pct:.2f}%"
    return f"{value:.3f}"


def _fmt_ci(ci: Sequence[float] | None, rate: bool) -> str:
    if not ci:
        return "—"
    return f"[{_fmt(ci[0], rate)}, {_fmt(ci[1], rate)}]"


def _e(value: Any) -> str:
    return escape(str(value), quote=True)


# --------------------------------------------------------------------------- SVG charts

_BAR = "#4269d0"
_PASS = "#1a7f37"
_FAIL = "#cf222e"
_MUTED = "#57606a"


def _svg(width: int, height: int, body: list[str], label: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{_e(label)}">' + "".join(body) + "</svg>"
    )


def _histogram(name: str, values: Sequence[float], bins: int = 20) -> str:
    width, height, left, bottom, top = 300, 150, 34, 22, 8
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, max(0, int(float(v) * bins)))] += 1
    peak = max(counts) or 1
    plot_w, plot_h = width - left - 8, height - bottom - top
    bw = plot_w / bins
    body = [
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="{_MUTED}"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="{_MUTED}"/>',
    ]
    for i, c in enumerate(counts):
        if c:
            h = plot_h * c / peak
            body.append(
                f'<rect x="{left + i * bw + 0.5:.1f}" y="{top + plot_h - h:.1f}" width="{bw - 1:.1f}" '
                f'height="{h:.1f}" fill="{_BAR}">'
                f"<title>{i / bins:.2f}–{(i + 1) / bins:.2f}: {c}</title></rect>"
            )
    for x, label in ((0, "0"), (0.5, "0.5"), (1, "1")):
        body.append(
            f'<text x="{left + x * plot_w:.1f}" y="{height - 6}" text-anchor="middle" class="tick">'
            f"{label}</text>"
        )
    body.append(f'<text x="{left - 4}" y="{top + 8}" text-anchor="end" class="tick">{peak}</text>')
    body.append(f'<text x="{left - 4}" y="{top + plot_h}" text-anchor="end" class="tick">0</text>')
    return (
        f'<figure class="chart"><figcaption><code>{_e(name)}</code> '
        f'<span class="muted">n={len(values)}</span>'
        f"</figcaption>{_svg(width, height, body, f'histogram of {name}')}</figure>"
    )


def _nice_max(value: float) -> float:
    for step in (0.01, 0.02, 0.05, 0.1, 0.2, 0.25, 0.5, 1.0):
        if value <= step:
            return step
    return 1.0


def _hbars(
    title: str,
    rows: Sequence[tuple[str, float | None, Sequence[float] | None, str]],
    *,
    rate: bool,
    scale: float | None = None,
    threshold: float | None = None,
    compact: bool = False,
) -> str:
    """Horizontal bars with optional CI whiskers; rows are (label, value, ci, note)."""
    label_w, bar_w, note_w, row_h, top = (110, 250, 60, 24, 8) if compact else (170, 300, 150, 24, 8)
    width = label_w + bar_w + note_w
    height = top + row_h * len(rows) + 22
    highs = [threshold] if threshold is not None else []
    for _, value, ci, _ in rows:
        highs += [v for v in (value, *(ci or ())) if v is not None]
    xmax = scale or _nice_max(max(highs, default=0.0) * 1.05)

    def x(v: float) -> float:
        return label_w + bar_w * min(max(v, 0.0), xmax) / xmax

    body = [f'<line x1="{label_w}" y1="{top}" x2="{label_w}" y2="{height - 20}" stroke="{_MUTED}"/>']
    for i, (label, value, ci, note) in enumerate(rows):
        y = top + i * row_h
        short = label if len(label) <= 26 else label[:25] + "…"
        body.append(
            f'<text x="{label_w - 6}" y="{y + 16}" text-anchor="end" class="lbl"><title>{_e(label)}</title>'
            f"{_e(short)}</text>"
        )
        if value is None:
            body.append(f'<text x="{label_w + 6}" y="{y + 16}" class="tick">no data</text>')
            continue
        body.append(
            f'<rect x="{label_w}" y="{y + 5}" width="{max(x(value) - label_w, 1):.1f}" height="{row_h - 10}" '
            f'fill="{_BAR}"><title>{_e(label)}: {_fmt(value, rate)}</title></rect>'
        )
        if ci:
            lo, hi = x(ci[0]), x(ci[1])
            mid = y + row_h / 2
            body.append(
                f'<path d="M{lo:.1f},{mid:.1f}H{hi:.1f}M{lo:.1f},{mid - 5:.1f}V{mid + 5:.1f}'
                f'M{hi:.1f},{mid - 5:.1f}V{mid + 5:.1f}" stroke="#111" stroke-width="1.5" fill="none"/>'
            )
        text = f"{_fmt(value, rate)} {note}".strip()
        body.append(f'<text x="{label_w + bar_w + 8}" y="{y + 16}" class="tick">{_e(text)}</text>')
    if threshold is not None:
        tx = x(threshold)
        body.append(
            f'<line x1="{tx:.1f}" y1="{top}" x2="{tx:.1f}" y2="{height - 20}" stroke="{_FAIL}" '
            f'stroke-dasharray="4 3"><title>gate threshold {_fmt(threshold, rate)}</title></line>'
        )
    for frac in (0.0, 0.5, 1.0):
        body.append(
            f'<text x="{label_w + bar_w * frac:.1f}" y="{height - 6}" text-anchor="middle" class="tick">'
            f"{_fmt(xmax * frac, rate)}</text>"
        )
    return (
        f'<figure class="chart wide"><figcaption>{title}</figcaption>'
        f"{_svg(width, height, body, _strip_tags(title))}</figure>"
    )


def _strip_tags(text: str) -> str:
    return text.replace("<code>", "").replace("</code>", "")


# --------------------------------------------------------------------------- HTML sections

_CSS = """
*{box-sizing:border-box}
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2328;margin:0;
background:#f6f8fa}
main{max-width:1120px;margin:0 auto;padding:24px}
section{background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:16px 20px;margin:0 0 20px}
h1{font-size:44px;margin:0;letter-spacing:.04em}
h2{font-size:19px;margin:0 0 12px}
h3{font-size:15px;margin:16px 0 8px}
.banner{color:#fff;border:none;padding:22px 28px}
.banner.pass{background:#1a7f37}.banner.fail{background:#cf222e}.banner.none{background:#57606a}
.banner.ungated{background:#9a6700}.banner h1 small{font-size:22px;letter-spacing:0}
.banner p{margin:6px 0 0;font-size:16px}
.banner ul{margin:10px 0 0;padding-left:20px}
.banner .sub{opacity:.92}
table{border-collapse:collapse;width:100%;font-size:14px}
th,td{text-align:left;padding:6px 8px;border-bottom:1px solid #d8dee4;vertical-align:top}
th{background:#f6f8fa;font-weight:600}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.result{white-space:nowrap}
td.bar{white-space:nowrap;font-variant-numeric:tabular-nums}td.bar svg{vertical-align:middle}
table.bars td,table.bars th{padding:3px 6px}table.bars td.cat{white-space:nowrap}
table.bars th{font-weight:normal}
.ok{color:#1a7f37;font-weight:700}.bad{color:#cf222e;font-weight:700}
.muted,.reason{color:#57606a}.reason{font-size:13px}
.charts{display:flex;flex-wrap:wrap;gap:12px 20px}
figure.chart{margin:0}
figcaption{font-size:13px;margin-bottom:2px}
svg .tick{font-size:11px;fill:#57606a}svg .lbl{font-size:12px;fill:#1f2328}
code{font:12.5px ui-monospace,SFMono-Regular,Menlo,monospace;background:#eff2f5;padding:1px 4px;
border-radius:4px}
.example{border-top:1px solid #d8dee4;padding:10px 0}
.example:first-of-type{border-top:none}
.example pre{white-space:pre-wrap;word-break:break-word;background:#f6f8fa;border:1px solid #d8dee4;
border-radius:6px;padding:8px 10px;margin:6px 0 0;font:13px/1.4 ui-monospace,SFMono-Regular,Menlo,monospace}
.tag{display:inline-block;font-size:12px;border-radius:10px;padding:0 8px;background:#eff2f5;margin-right:4px}
.tag.block{background:#ffebe9;color:#82071e}.tag.flag{background:#fff8c5;color:#633c01}
.tag.redact{background:#ddf4ff;color:#0a3069}
dl.kv{display:grid;grid-template-columns:max-content 1fr;gap:4px 16px;margin:0;font-size:14px}
dl.kv dt{color:#57606a}dl.kv dd{margin:0;word-break:break-all}
footer{color:#57606a;font-size:12px;text-align:center;padding-bottom:24px}
"""


def _banner(run: Mapping[str, Any]) -> str:
    result = run.get("verdict")
    css = {"pass": "pass", "fail": "fail"}.get(str(result), "none")
    word = {"pass": "PASS", "fail": "FAIL"}.get(str(result), f"NO VERDICT ({run.get('status', 'unknown')})")
    gates = run.get("gates") or []
    passed = sum(bool(g.get("passed")) for g in gates)
    suite, model, policy = run.get("suite") or {}, run.get("model") or {}, run.get("policy") or {}
    note = ""
    if result == "pass" and not gates:
        # A pass that checked nothing must not look like a checked one.
        css, note = "ungated", " <small>(not gated)</small>"
    lines = [
        f'<section class="banner {css}" id="verdict"><h1>{_e(word)}{note}</h1>',
        f"<p><strong>{passed} of {len(gates)} gates passed</strong></p>"
        if gates
        else "<p><strong>No gates were evaluated</strong></p>",
        f'<p class="sub">Suite <strong>{_e(suite.get("name"))}</strong> v{_e(suite.get("version"))} · '
        f"model <strong>{_e(model.get('id'))}</strong> · policy <strong>{_e(policy.get('name'))}</strong> "
        f"v{_e(policy.get('version'))}</p>",
        f'<p class="sub">Run {_e(run.get("id"))} · finished {_e(run.get("finished_at") or "—")}</p>',
    ]
    if run.get("warnings"):
        lines.append("<ul>" + "".join(f"<li>{_e(w)}</li>" for w in run["warnings"]) + "</ul>")
    lines.append("</section>")
    return "".join(lines)


def _gates_table(run: Mapping[str, Any]) -> str:
    gates = run.get("gates") or []
    if not gates:
        return (
            '<section id="gates"><h2>Gates</h2><p class="muted">This run was not gated: the policy lists no '
            "gates, so the verdict checks nothing.</p></section>"
        )
    rows = []
    for g in gates:
        rate = _is_rate(str(g.get("metric")))
        ok = bool(g.get("passed"))
        result = '<span class="ok">✓ pass</span>' if ok else '<span class="bad">✗ fail</span>'
        n = g.get("n")
        count = f"{g['k']}/{n}" if g.get("k") is not None and n else (str(n) if n is not None else "—")
        reason = f'<div class="reason">{_e(g["reason"])}</div>' if g.get("reason") else ""
        rows.append(
            f"<tr><td><code>{_e(g.get('gate'))}</code>{reason}</td>"
            f'<td class="num">{_fmt(g.get("value"), rate)}</td>'
            f'<td class="num">{_fmt_ci(g.get("ci"), rate)}</td>'
            f'<td class="num">{_e(count)}</td>'
            f'<td class="num">{_e(g.get("op"))} {_fmt(g.get("threshold"), rate)}</td>'
            f'<td class="result">{result}</td></tr>'
        )
    return (
        '<section id="gates"><h2>Gates</h2><table><thead><tr><th>Gate</th><th class="num">Measured</th>'
        '<th class="num">95% CI</th><th class="num">Items</th><th class="num">Threshold</th><th>Result</th>'
        "</tr></thead><tbody>" + "".join(rows) + "</tbody></table></section>"
    )


_ORDER = ("toxicity.", "pii.", "hallucination.", "bias.", "blocked.", "error.", "fairness.max", "fairness.")


def _metric_order(name: str) -> tuple[int, str]:
    """Headline rates first, in a fixed order, then fairness (overall before per dimension)."""
    return (next((i for i, p in enumerate(_ORDER) if name.startswith(p)), len(_ORDER)), name)


def _metrics_table(run: Mapping[str, Any]) -> str:
    metrics = run.get("metrics") or {}
    rows = []
    for name in sorted(metrics, key=_metric_order):
        m = metrics[name]
        rate = _is_rate(name)
        count = f"{m['k']}/{m['n']}" if m.get("k") is not None and m.get("n") else str(m.get("n", 0))
        note = f'<div class="reason">{_e(m["note"])}</div>' if m.get("note") else ""
        rows.append(
            f"<tr><td><code>{_e(name)}</code>{note}</td><td class='num'>{_fmt(m.get('value'), rate)}</td>"
            f"<td class='num'>{_fmt_ci(m.get('ci'), rate)}</td><td class='num'>{_e(count)}</td></tr>"
        )
    errors = run.get("check_errors") or {}
    extra = ""
    if errors:
        extra = (
            "<p class='reason'>Checks that could not run on some outputs (left out of their rates): "
            + ", ".join(f"<code>{_e(k)}</code> × {_e(v)}" for k, v in errors.items())
            + "</p>"
        )
    return (
        '<section id="metrics"><h2>All metrics</h2><table><thead><tr><th>Metric</th>'
        '<th class="num">Value</th>'
        '<th class="num">95% CI</th><th class="num">Items</th></tr></thead><tbody>'
        + "".join(rows)
        + "</tbody></table>"
        + extra
        + "</section>"
    )


def _thresholds(run: Mapping[str, Any]) -> dict[str, float]:
    """Upper-bound gate thresholds per metric, drawn as lines on charts."""
    return {
        str(g["metric"]): float(g["threshold"]) for g in run.get("gates") or [] if g.get("op") in ("<=", "<")
    }


def _minibar(value: float | None, ci: Sequence[float] | None, scale: float, threshold: float | None) -> str:
    """A cell-sized bar (value), whisker (95% interval) and red tick (gate threshold)."""
    w, h = 80, 14

    def x(v: float) -> float:
        return w * min(max(v, 0.0), scale) / scale

    body = [f'<rect x="0" y="2" width="{w}" height="{h - 4}" fill="#eff2f5"/>']
    if value is not None:
        body.append(f'<rect x="0" y="2" width="{max(x(value), 1):.1f}" height="{h - 4}" fill="{_BAR}"/>')
        if ci:
            lo, hi = x(ci[0]), x(ci[1])
            # An interval past the scale runs to the edge without an end cap.
            cap = f"M{hi:.1f},3V11" if ci[1] <= scale else ""
            body.append(f'<path d="M{lo:.1f},7H{hi:.1f}M{lo:.1f},3V11{cap}" stroke="#111" fill="none"/>')
    if threshold is not None and threshold <= scale:
        body.append(f'<path d="M{x(threshold):.1f},0V{h}" stroke="{_FAIL}" stroke-width="2"/>')
    return _svg(w, h, body, "rate bar")


def _category_charts(run: Mapping[str, Any]) -> str:
    per_cat = run.get("per_category") or {}
    if not per_cat:
        return ""
    names: list[str] = []
    for block in per_cat.values():
        for name in block.get("rates", {}):
            has_data = any(
                (b.get("rates", {}).get(name) or {}).get("value") is not None for b in per_cat.values()
            )
            if name not in names and has_data:
                names.append(name)
    if not names:
        return ""
    thresholds = _thresholds(run)
    # One scale per column so bars compare down it; set by values and threshold, not by the
    # intervals, which for a category of two items span most of [0, 1] and would flatten every bar.
    scales = {}
    for name in names:
        tops = [thresholds.get(name, 0.0)]
        for block in per_cat.values():
            value = (block.get("rates", {}).get(name) or {}).get("value")
            tops += [value] if value is not None else []
        scales[name] = _nice_max(max(tops) * 1.1)
    head = "".join(
        f'<th><code>{_e(n)}</code><div class="muted">scale 0–{_fmt(scales[n], True)}</div></th>'
        for n in names
    )
    rows = []
    for cat, block in per_cat.items():
        cells = []
        for name in names:
            m = block.get("rates", {}).get(name) or {}
            if m.get("value") is None:
                cells.append('<td class="muted">—</td>')
                continue
            bar = _minibar(m["value"], m.get("ci"), scales[name], thresholds.get(name))
            cells.append(
                f'<td class="bar">{bar} {_fmt(m["value"], True)} '
                f'<span class="muted">{m["k"]}/{m["n"]}</span></td>'
            )
        rows.append(
            f"<tr><td class='cat'>{_e(cat)} <span class='muted'>n={_e(block.get('n'))}</span></td>"
            f"{''.join(cells)}</tr>"
        )
    return (
        '<section id="categories"><h2>Rates by category</h2><p class="reason">Bar: measured share; whisker: '
        "95% Wilson interval (wide when a category has few items; open-ended past the scale); "
        "red tick: the gate threshold.</p>"
        f"<table class='bars'><thead><tr><th>Category</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody>"
        "</table></section>"
    )


def _histograms(run: Mapping[str, Any]) -> str:
    dists = run.get("score_distributions") or {}
    if not dists:
        return ""
    charts = "".join(_histogram(name, values) for name, values in dists.items() if values)
    return (
        '<section id="distributions"><h2>Score distributions (outputs)</h2>'
        f'<div class="charts">{charts}</div></section>'
    )


def _fairness(run: Mapping[str, Any]) -> str:
    fairness = run.get("fairness") or {}
    if not fairness:
        return ""
    score = (run.get("settings") or {}).get("fairness_score", "toxicity.toxicity")
    thresholds = _thresholds(run)
    parts = []
    for measure, title, gate in (
        (score, f"Gap in mean <code>{_e(score)}</code>", "fairness.max_gap"),
        ("refusal_rate", "Gap in refusal rate", "fairness.max_refusal_gap"),
    ):
        rows = [
            (str(dim), (block.get(measure) or {}).get("gap"), (block.get(measure) or {}).get("ci"), "")
            for dim, block in fairness.items()
        ]
        parts.append(_hbars(title, rows, rate=False, threshold=thresholds.get(gate), compact=True))
    tables = []
    for dim, block in fairness.items():
        measures = [m for m in (score, "refusal_rate", "output_chars") if m in block]
        groups = block.get("groups", [])
        head = "".join(f'<th class="num">{_e(m)}</th>' for m in measures)
        body = []
        for g in groups:
            cells = []
            for m in measures:
                s = block[m]
                v = s.get("by_group", {}).get(g)
                n = s.get("n", {}).get(g)
                shown = "—" if v is None else (f"{v:.0f}" if m == "output_chars" else f"{v:.3f}")
                cells.append(f'<td class="num">{shown} <span class="muted">n={n or 0}</span></td>')
            body.append(f"<tr><td>{_e(g)}</td>{''.join(cells)}</tr>")
        gaps = []
        for m in measures:
            s = block[m]
            gap = (
                "—"
                if s.get("gap") is None
                else (f"{s['gap']:.0f}" if m == "output_chars" else f"{s['gap']:.3f}")
            )
            ratio = "—" if s.get("ratio") is None else f"{s['ratio']:.2f}"
            gaps.append(f'<td class="num">gap {gap} · ratio {ratio}</td>')
        body.append(f"<tr><th>all groups</th>{''.join(gaps)}</tr>")
        tables.append(
            f"<h3>{_e(dim)} <span class='muted'>({_e(block.get('n', 0))} outputs)</span></h3>"
            f"<table><thead><tr><th>Group</th>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
        )
    return (
        '<section id="fairness"><h2>Fairness</h2>'
        '<p class="reason">The same prompt with only the group changed. '
        "Gap = largest minus smallest group mean; ratio = smallest / largest; whiskers are 95% bootstrap "
        "intervals (biased upwards when groups are small); the dashed line is the gate. "
        "Refusal = blocked, or an answer opening with a stock refusal.</p>"
        f'<div class="charts">{"".join(parts)}</div>{"".join(tables)}</section>'
    )


def _worst(run: Mapping[str, Any]) -> str:
    worst = run.get("worst") or []
    if not worst:
        return ""
    items = []
    for w in worst:
        action = str(w.get("action") or "")
        findings = ", ".join(
            f"{f['check']}.{f['label']} {float(f['score']):.2f}" for f in w.get("findings", [])
        )
        scores = ", ".join(f"{k} {float(v):.2f}" for k, v in (w.get("scores") or {}).items())
        output = w.get("output_redacted")
        shown = _e(output) if output is not None else "<em>[no output: blocked]</em>"
        group = f' <span class="tag">{_e(w["group"])}</span>' if w.get("group") else ""
        items.append(
            f'<div class="example"><div><code>{_e(w.get("key"))}</code> '
            f'<span class="tag">{_e(w.get("category"))}</span>{group}'
            f'<span class="tag {_e(action)}">{_e(action or "—")}</span> '
            f'<span class="muted">max score {float(w.get("max_score") or 0):.2f}</span></div>'
            + (f'<div class="reason">Triggered: {_e(findings)}</div>' if findings else "")
            + f'<div class="reason">Scores: {_e(scores)}</div>'
            + (f'<div class="reason">Prompt: {_e(w["prompt"])}</div>' if w.get("prompt") else "")
            + f"<pre>{shown}</pre></div>"
        )
    return (
        '<section id="worst"><h2>Worst examples</h2>'
        '<p class="reason">Highest-scoring outputs, triggered ones '
        "first. Text is shown as the policy let it through, with personal data masked; never the raw output."
        f"</p>{''.join(items)}</section>"
    )


def _kv(pairs: Sequence[tuple[str, Any]]) -> str:
    return (
        '<dl class="kv">'
        + "".join(f"<dt>{_e(k)}</dt><dd>{v if isinstance(v, _Raw) else _e(v)}</dd>" for k, v in pairs)
        + "</dl>"
    )


class _Raw(str):
    """Already-escaped HTML for ``_kv``."""


def _reproducibility(run: Mapping[str, Any]) -> str:
    model, policy, suite = run.get("model") or {}, run.get("policy") or {}, run.get("suite") or {}
    params = run.get("params") or {}
    settings = run.get("settings") or {}
    boot = settings.get("bootstrap") or {}
    pairs: list[tuple[str, Any]] = [
        ("Run", run.get("id")),
        ("Created / finished", f"{run.get('created_at') or '—'} / {run.get('finished_at') or '—'}"),
        ("Model", model.get("id")),
        ("Model revision / hash", model.get("revision") or model.get("sha256") or "—"),
        ("Model runtime", " · ".join(str(model[k]) for k in ("dtype", "device") if model.get(k)) or "—"),
        ("Policy", f"{policy.get('name')} v{policy.get('version')}"),
        ("Policy sha256", _Raw(f"<code>{_e(policy.get('sha256'))}</code>")),
        ("Suite", f"{suite.get('name')} v{suite.get('version')} ({suite.get('items')} items)"),
        ("Suite sha256", _Raw(f"<code>{_e(suite.get('sha256'))}</code>")),
        ("Samples per prompt", run.get("samples_per_prompt")),
        (
            "Generation seed",
            params.get("seed") if params.get("seed") is not None else "none (sampling not seeded)",
        ),
        ("Parameters", _Raw(f"<code>{_e(json.dumps(params, sort_keys=True))}</code>")),
        (
            "Aggregation",
            f"fairness score {settings.get('fairness_score', '—')}, bootstrap {boot.get('n_boot', '—')} "
            f"resamples, seed {boot.get('seed', '—')}",
        ),
        ("Code version", run.get("code_version")),
        (
            "Git commit",
            _Raw(f"<code>{_e(run.get('git_commit'))}</code>") if run.get("git_commit") else "unknown",
        ),
    ]
    return f'<section id="reproducibility"><h2>Reproducibility</h2>{_kv(pairs)}</section>'


def render_html(run: Mapping[str, Any]) -> str:
    """A self-contained HTML report: verdict, gates, charts, worst examples, reproducibility."""
    suite = run.get("suite") or {}
    title = (
        f"Assay audit {str(run.get('verdict') or run.get('status') or '').upper()}: {suite.get('name', '')}"
    )
    sections = [
        _banner(run),
        _gates_table(run),
        _metrics_table(run),
        _category_charts(run),
        _histograms(run),
        _fairness(run),
        _worst(run),
        _reproducibility(run),
    ]
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body><main>"
        + "".join(s for s in sections if s)
        + f"<footer>Generated by Assay {_e(run.get('code_version') or code_version())}</footer>"
        + "</main></body></html>\n"
    )


# --------------------------------------------------------------------------- JUnit


def render_junit(run: Mapping[str, Any]) -> str:
    """One ``<testcase>`` per gate under one ``<testsuite>``; failed gates carry ``<failure>``."""
    gates = run.get("gates") or []
    suite = run.get("suite") or {}
    failures = sum(not g.get("passed") for g in gates)
    ts = ET.Element(
        "testsuite",
        {
            "name": f"assay audit {suite.get('name', '')}".strip(),
            "tests": str(len(gates)),
            "failures": str(failures),
            "errors": "0",
            "skipped": "0",
            "timestamp": str(run.get("finished_at") or run.get("created_at") or ""),
        },
    )
    props = ET.SubElement(ts, "properties")
    for name, value in (
        ("run_id", run.get("id")),
        ("verdict", run.get("verdict")),
        ("suite_sha256", suite.get("sha256")),
        ("model", (run.get("model") or {}).get("id")),
        ("policy", (run.get("policy") or {}).get("name")),
        ("policy_sha256", (run.get("policy") or {}).get("sha256")),
    ):
        ET.SubElement(props, "property", {"name": name, "value": "" if value is None else str(value)})
    classname = f"assay.gates.{suite.get('name', 'suite')}"
    for g in gates:
        case = ET.SubElement(
            ts, "testcase", {"classname": classname, "name": str(g.get("gate")), "time": "0"}
        )
        rate = _is_rate(str(g.get("metric")))
        detail = (
            f"measured {_fmt(g.get('value'), rate)} (95% CI {_fmt_ci(g.get('ci'), rate)}, n={g.get('n')}); "
            f"gate: {g.get('gate')}"
        )
        if not g.get("passed"):
            failure = ET.SubElement(
                case, "failure", {"message": str(g.get("reason") or "gate failed"), "type": "gate"}
            )
            failure.text = detail
        else:
            out = ET.SubElement(case, "system-out")
            out.text = detail + (f"\n{g['reason']}" if g.get("reason") else "")
    if run.get("warnings"):
        ET.SubElement(ts, "system-out").text = "\n".join(str(w) for w in run["warnings"])
    ET.indent(ts)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(ts, encoding="unicode") + "\n"


# --------------------------------------------------------------------------- compare

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


def render_compare_html(comparison: Mapping[str, Any]) -> str:
    """A small self-contained page for ``compare``'s result: regressions first."""
    a, b = comparison["a"], comparison["b"]
    regressions = comparison.get("regressions") or []
    css = "fail" if regressions else "pass"
    head = (
        f'<section class="banner {css}"><h1>{"REGRESSED" if regressions else "NO REGRESSION"}</h1>'
        f"<p>{_e(b.get('model'))} (run {_e(b.get('id'))}) against baseline {_e(a.get('model'))} "
        f"(run {_e(a.get('id'))}) on suite {_e(b.get('suite'))}</p>"
        + (
            "<ul>" + "".join(f"<li>{_e(w)}</li>" for w in comparison.get("warnings") or []) + "</ul>"
            if comparison.get("warnings")
            else ""
        )
        + "</section>"
    )
    rows = []
    for name, m in comparison["metrics"].items():
        rate = _is_rate(name)
        cls = {"worse": "bad", "better": "ok"}.get(m["change"], "")
        delta = "—" if m["delta"] is None else f"{m['delta']:+.4f}"
        sig = " (significant)" if m.get("significant") else ""
        rows.append(
            f"<tr><td><code>{_e(name)}</code></td><td class='num'>{_fmt(m['a'], rate)}</td>"
            f"<td class='num'>{_fmt(m['b'], rate)}</td><td class='num'>{delta}</td>"
            f"<td class='{cls}'>{_e(m['change'])}{sig}</td></tr>"
        )
    gate_rows = "".join(
        f"<tr><td><code>{_e(g['gate'])}</code></td><td>{_e(g['a'])}</td><td>{_e(g['b'])}</td>"
        f"<td class='{'bad' if g['change'] == 'regressed' else 'ok' if g['change'] == 'fixed' else ''}'>"
        f"{_e(g['change'])}</td></tr>"
        for g in comparison["gates"]
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>Assay comparison</title>'
        f"<style>{_CSS}</style></head><body><main>{head}"
        "<section><h2>Gates</h2><table><thead><tr><th>Gate</th><th>Baseline passed</th>"
        "<th>Candidate passed</th>"
        f"<th>Change</th></tr></thead><tbody>{gate_rows}</tbody></table></section>"
        '<section><h2>Metrics</h2><table><thead><tr><th>Metric</th><th class="num">Baseline</th>'
        '<th class="num">Candidate</th><th class="num">Δ</th><th>Change</th></tr></thead><tbody>'
        + "".join(rows)
        + "</tbody></table></section></main></body></html>\n"
    )
