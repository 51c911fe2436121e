"""Number formatting and chart geometry for the audit reports; the SVG markup is in ``charts.svg.j2``.

Each chart function returns plain numbers and strings (coordinates rounded to
0.1 px) for one chart; the template only places them, so the markup stays in
one file and the arithmetic in Python. ``fmt`` and ``fmt_ci`` are how every
report (HTML, JUnit) writes a metric.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


def is_rate(name: str) -> bool:
    return name.endswith("rate")


def fmt(value: float | None, rate: bool) -> str:
    """A metric value as the report shows it: rates as percentages, others to 3 decimals."""
    if value is None:
        return "n/a"
    if rate:
        pct = value * 100
        if pct == round(pct):
            return f"{pct:.0f}%"
        return f"{pct:.1f}%" if pct >= 1 else f"{pct:.2f}%"
    return f"{value:.3f}"


def fmt_ci(ci: Sequence[float] | None, rate: bool) -> str:
    if not ci:
        return "—"
    return f"[{fmt(ci[0], rate)}, {fmt(ci[1], rate)}]"


def nice_max(value: float) -> float:
    """The smallest round axis end at or above ``value`` (rates and gaps live in [0, 1])."""
    for step in (0.01, 0.02, 0.05, 0.1, 0.2, 0.25, 0.5, 1.0):
        if value <= step:
            return step
    return 1.0


def _r(v: float) -> float:
    return round(float(v), 1)


@dataclass(frozen=True)
class Rect:
    x: float
    y: float
    width: float
    height: float
    title: str = ""


@dataclass(frozen=True)
class Tick:
    x: float
    y: float
    text: str
    anchor: str = "middle"


# --------------------------------------------------------------------------- histogram


@dataclass(frozen=True)
class Histogram:
    name: str
    n: int
    width: int
    height: int
    left: int
    top: int
    plot_w: int
    plot_h: int
    bars: list[Rect]
    ticks: list[Tick]
    peak: int


def histogram(name: str, values: Sequence[float], bins: int = 20) -> Histogram:
    """Counts of ``values`` (scores in [0, 1]) in ``bins`` equal bins."""
    width, height, left, bottom, top = 300, 150, 34, 22, 8
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, max(0, int(float(v) * bins)))] += 1
    peak = max(counts) or 1
    plot_w, plot_h = width - left - 8, height - bottom - top
    bw = plot_w / bins
    bars = [
        Rect(
            _r(left + i * bw + 0.5),
            _r(top + plot_h - plot_h * c / peak),
            _r(bw - 1),
            _r(plot_h * c / peak),
            f"{i / bins:.2f}–{(i + 1) / bins:.2f}: {c}",
        )
        for i, c in enumerate(counts)
        if c
    ]
    ticks = [
        Tick(_r(left + x * plot_w), height - 6, label) for x, label in ((0, "0"), (0.5, "0.5"), (1, "1"))
    ]
    ticks += [Tick(left - 4, top + 8, str(peak), "end"), Tick(left - 4, top + plot_h, "0", "end")]
    return Histogram(name, len(values), width, height, left, top, plot_w, plot_h, bars, ticks, peak)


# --------------------------------------------------------------------------- horizontal bars


@dataclass(frozen=True)
class BarRow:
    label: str
    short: str
    y: int
    bar: Rect | None = None
    whisker: str | None = None
    text: str = ""


@dataclass(frozen=True)
class HBars:
    """Horizontal bars with optional CI whiskers and a dashed gate threshold."""

    title: str
    code: str | None
    width: int
    height: int
    label_w: int
    note_x: int
    top: int
    rows: list[BarRow]
    ticks: list[Tick]
    threshold_x: float | None = None
    threshold_title: str = ""

    @property
    def label(self) -> str:
        """The chart's accessible name: the caption as plain text."""
        return f"{self.title} {self.code}" if self.code else self.title


def hbars(
    title: str,
    rows: Sequence[tuple[str, float | None, Sequence[float] | None, str]],
    *,
    rate: bool,
    code: str | None = None,
    scale: float | None = None,
    threshold: float | None = None,
    compact: bool = False,
) -> HBars:
    """Rows are (label, value, ci, note); ``code`` is shown after the title in monospace."""
    label_w, bar_w, note_w, row_h, top = (110, 250, 60, 24, 8) if compact else (170, 300, 150, 24, 8)
    width = label_w + bar_w + note_w
    height = top + row_h * len(rows) + 22
    highs = [threshold] if threshold is not None else []
    for _, value, ci, _ in rows:
        highs += [v for v in (value, *(ci or ())) if v is not None]
    xmax = scale or nice_max(max(highs, default=0.0) * 1.05)

    def x(v: float) -> float:
        return label_w + bar_w * min(max(v, 0.0), xmax) / xmax

    out = []
    for i, (label, value, ci, note) in enumerate(rows):
        y = top + i * row_h
        short = label if len(label) <= 26 else label[:25] + "…"
        if value is None:
            out.append(BarRow(label, short, y))
            continue
        bar = Rect(label_w, y + 5, _r(max(x(value) - label_w, 1)), row_h - 10, f"{label}: {fmt(value, rate)}")
        whisker = None
        if ci:
            lo, hi, mid = x(ci[0]), x(ci[1]), y + row_h / 2
            whisker = (
                f"M{lo:.1f},{mid:.1f}H{hi:.1f}M{lo:.1f},{mid - 5:.1f}V{mid + 5:.1f}"
                f"M{hi:.1f},{mid - 5:.1f}V{mid + 5:.1f}"
            )
        out.append(BarRow(label, short, y, bar, whisker, f"{fmt(value, rate)} {note}".strip()))
    ticks = [Tick(_r(label_w + bar_w * f), height - 6, fmt(xmax * f, rate)) for f in (0.0, 0.5, 1.0)]
    return HBars(
        title=title,
        code=code,
        width=width,
        height=height,
        label_w=label_w,
        note_x=label_w + bar_w + 8,
        top=top,
        rows=out,
        ticks=ticks,
        threshold_x=None if threshold is None else _r(x(threshold)),
        threshold_title="" if threshold is None else f"gate threshold {fmt(threshold, rate)}",
    )


# --------------------------------------------------------------------------- table-cell bar


@dataclass(frozen=True)
class MiniBar:
    """A cell-sized bar (value), whisker (95% interval) and red tick (gate threshold)."""

    width: int
    height: int
    bar_w: float | None = None
    whisker: str | None = None
    threshold: str | None = None


def minibar(
    value: float | None, ci: Sequence[float] | None, scale: float, threshold: float | None
) -> MiniBar:
    w, h = 80, 14

    def x(v: float) -> float:
        return w * min(max(v, 0.0), scale) / scale

    bar_w = whisker = tick = None
    if value is not None:
        bar_w = _r(max(x(value), 1))
        if ci:
            lo, hi = x(ci[0]), x(ci[1])
            # An interval past the scale runs to the edge without an end cap.
            cap = f"M{hi:.1f},3V11" if ci[1] <= scale else ""
            whisker = f"M{lo:.1f},7H{hi:.1f}M{lo:.1f},3V11{cap}"
    if threshold is not None and threshold <= scale:
        tick = f"M{x(threshold):.1f},0V{h}"
    return MiniBar(w, h, bar_w, whisker, tick)
