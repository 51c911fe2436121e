"""Release gates: conditions on audit metrics, such as ``"toxicity.flag_rate <= 0.01"``.

A policy lists its gates; an audit run measures metrics (``evaluators.audit.aggregate``)
and each gate passes or fails on the measured value. Rules that keep a gate honest:

* A metric the run did not measure, or measured on no items, fails its gate. Never pass.
* Every value comes with a 95% confidence interval: Wilson score intervals for rates
  (``k`` of ``n`` items), percentile bootstrap intervals for group gaps. Pass/fail is
  decided on the measured value; ``conclusive`` says whether the whole interval agrees,
  so a pass on 20 items reads differently from a pass on 2,000.
* ``verdict`` of no gates is "pass" (nothing was asked), and ``gate_warnings`` says so:
  reports show it, so an ungated run is never mistaken for a checked one.

This module is imported by policy validation, so it stays light: numpy only, lazily.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Op = Literal["<=", "<", ">=", ">", "==", "!="]
MetricKind = Literal["rate", "gap"]

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    "<": operator.lt,
    ">=": operator.ge,
    ">": operator.gt,
    # Rates are k/n and thresholds are decimals: compare with a tolerance, not bit for bit.
    "==": lambda a, b: math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12),
    "!=": lambda a, b: not math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12),
}

# Metric names per family. Fairness metrics are per dimension too: fairness.<dimension>.gap.
RATE_METRICS: dict[str, str] = {
    "toxicity.flag_rate": "share of outputs with a triggered toxicity finding",
    "pii.leak_rate": "share of outputs with a triggered PII finding",
    "hallucination.rate": "share of checked outputs whose hallucination check triggered",
    "bias.flag_rate": "share of outputs with a triggered bias finding",
    "blocked.rate": "share of items blocked at input or output",
    "error.rate": "share of items that failed to run",
}
GAP_METRICS: dict[str, str] = {
    "fairness.max_gap": "largest per-dimension gap in mean score between groups",
    "fairness.max_refusal_gap": "largest per-dimension gap in refusal rate between groups",
}
_DIMENSION_GAP = re.compile(r"^fairness\.([a-z][a-z0-9_]*)\.(gap|refusal_gap)$")
FAMILIES = sorted({name.split(".")[0] for name in (*RATE_METRICS, *GAP_METRICS)})

_GATE = re.compile(
    r"^\s*(?P<metric>[A-Za-z_][A-Za-z0-9_.]*)\s*(?P<op><=|>=|==|!=|<|>)\s*"
    r"(?P<value>[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)\s*(?P<pct>%)?\s*$"
)


def metric_kind(name: str) -> MetricKind | None:
    """``"rate"`` or ``"gap"`` for a known metric name, ``None`` for an unknown one."""
    if name in RATE_METRICS:
        return "rate"
    if name in GAP_METRICS or _DIMENSION_GAP.match(name):
        return "gap"
    return None


@dataclass(frozen=True)
class Metric:
    """One measured value: a rate (``k`` of ``n``) or a gap, with its 95% interval.

    ``value`` is ``None`` when nothing was measured (``n == 0``); a gate on it fails.
    """

    value: float | None
    n: int
    k: int | None = None
    ci: tuple[float, float] | None = None
    kind: MetricKind = "rate"
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "n": self.n,
            "k": self.k,
            "ci": list(self.ci) if self.ci is not None else None,
            "kind": self.kind,
            "note": self.note,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Metric:
        ci = data.get("ci")
        return cls(
            value=data.get("value"),
            n=int(data.get("n", 0)),
            k=data.get("k"),
            ci=(float(ci[0]), float(ci[1])) if ci else None,
            kind=data.get("kind", "rate"),
            note=data.get("note"),
        )


@dataclass(frozen=True)
class Gate:
    """A parsed gate: ``metric op threshold``."""

    metric: str
    op: Op
    threshold: float

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.threshold:g}"

    def holds(self, value: float) -> bool:
        return _OPS[self.op](value, self.threshold)


@dataclass(frozen=True)
class GateResult:
    """How one gate fared against a run's metrics."""

    gate: str
    metric: str
    op: Op
    threshold: float
    value: float | None
    n: int | None
    k: int | None
    ci: tuple[float, float] | None
    passed: bool
    conclusive: bool | None
    """Whether the outcome holds at both ends of the interval too; ``None`` without one."""
    reason: str | None
    """Why it failed, or why a pass is shaky; ``None`` for a clear pass."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "gate": self.gate,
            "metric": self.metric,
            "op": self.op,
            "threshold": self.threshold,
            "value": self.value,
            "n": self.n,
            "k": self.k,
            "ci": list(self.ci) if self.ci is not None else None,
            "passed": self.passed,
            "conclusive": self.conclusive,
            "reason": self.reason,
        }


def parse_gate(text: str) -> Gate:
    """Parse ``"metric op value"``; ``ValueError`` names what is wrong.

    ``value`` is a number in [0, 1], or a percentage such as ``1%``: every gated
    metric is a rate or a gap between rates or scores.
    """
    if not isinstance(text, str):
        raise ValueError(f"a gate is a string like 'toxicity.flag_rate <= 0.01', not {text!r}")
    m = _GATE.match(text)
    if m is None:
        raise ValueError(
            f"cannot parse gate {text!r}: write 'METRIC OP VALUE' with OP one of "
            "<=, <, >=, >, ==, != (e.g. 'toxicity.flag_rate <= 0.01')"
        )
    metric, op, value = m["metric"], m["op"], float(m["value"])
    if m["pct"]:
        value /= 100
    family = metric.split(".")[0]
    if family not in FAMILIES:
        raise ValueError(f"unknown metric family {family!r} in gate {text!r}; known: {', '.join(FAMILIES)}")
    if metric_kind(metric) is None:
        known = [n for n in (*RATE_METRICS, *GAP_METRICS) if n.startswith(family + ".")]
        if family == "fairness":
            known += ["fairness.<dimension>.gap", "fairness.<dimension>.refusal_gap"]
        raise ValueError(f"unknown metric {metric!r} in gate {text!r}; {family} has: {', '.join(known)}")
    if not 0.0 <= value <= 1.0:
        raise ValueError(
            f"threshold {value:g} in gate {text!r} is outside [0, 1]: rates and gaps are fractions "
            "(write 0.05 or 5% for five percent)"
        )
    return Gate(metric=metric, op=op, threshold=value)  # type: ignore[arg-type]


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for ``k`` successes in ``n`` trials (95% for z=1.96).

    Unlike the normal approximation it stays inside [0, 1] and is not zero-width
    at k=0, which is where release gates ("leak rate == 0") usually sit.
    """
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    # Clamp rounding noise at the edges (k=0 gives lo=-1e-17).
    return (max(0.0, centre - half), min(1.0, centre + half))


def bootstrap_gap_ci(
    groups: Mapping[str, Sequence[float]], n_boot: int = 1000, seed: int = 0, confidence: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of (largest group mean - smallest group mean).

    Each group is resampled on its own (stratified), so small groups stay in every
    replicate. Max minus min of noisy means is biased upwards: with many small groups
    and no real difference the interval still sits above zero. Read it with the group
    sizes in the report.
    """
    import numpy as np

    samples = [np.asarray(v, dtype=float) for v in groups.values() if len(v) > 0]
    if len(samples) < 2:
        raise ValueError("a gap needs at least two groups with values")
    if n_boot < 1:
        raise ValueError("n_boot must be positive")
    rng = np.random.default_rng(seed)
    means = np.empty((len(samples), n_boot))
    for i, values in enumerate(samples):
        idx = rng.integers(0, len(values), size=(n_boot, len(values)))
        means[i] = values[idx].mean(axis=1)
    gaps = means.max(axis=0) - means.min(axis=0)
    alpha = (1.0 - confidence) / 2
    lo, hi = np.quantile(gaps, [alpha, 1.0 - alpha])
    return (float(lo), float(hi))


def evaluate_gates(gates: Sequence[Gate | str], metrics: Mapping[str, Metric]) -> list[GateResult]:
    """Check each gate against ``metrics``; a missing or unmeasured metric fails."""
    results: list[GateResult] = []
    for raw in gates:
        gate = parse_gate(raw) if isinstance(raw, str) else raw
        metric = metrics.get(gate.metric)
        base: dict[str, Any] = {
            "gate": str(gate),
            "metric": gate.metric,
            "op": gate.op,
            "threshold": gate.threshold,
        }
        if metric is None:
            results.append(
                GateResult(
                    **base,
                    value=None,
                    n=None,
                    k=None,
                    ci=None,
                    passed=False,
                    conclusive=None,
                    reason=f"metric {gate.metric!r} was not measured in this run",
                )
            )
            continue
        ci = metric.ci
        if ci is None and metric.kind == "rate" and metric.k is not None and metric.n > 0:
            ci = wilson_interval(metric.k, metric.n)
        if metric.value is None or metric.n == 0:
            empty = f"metric {gate.metric!r} has no data in this run (n=0)"
            if metric.note:
                empty += f": {metric.note}"
            results.append(
                GateResult(
                    **base,
                    value=None,
                    n=metric.n,
                    k=metric.k,
                    ci=ci,
                    passed=False,
                    conclusive=None,
                    reason=empty,
                )
            )
            continue
        passed = gate.holds(metric.value)
        conclusive = None if ci is None else gate.holds(ci[0]) == passed and gate.holds(ci[1]) == passed
        reason: str | None = None
        show = _percent if metric.kind == "rate" else _decimal
        if not passed:
            reason = f"measured {show(metric.value)}, gate needs {gate.op} {show(gate.threshold)}"
        elif conclusive is False:
            assert ci is not None
            reason = (
                f"passes on the measured value, but the 95% interval [{show(ci[0])}, {show(ci[1])}] "
                f"reaches past {show(gate.threshold)}: more items would settle it"
            )
        results.append(
            GateResult(
                **base,
                value=metric.value,
                n=metric.n,
                k=metric.k,
                ci=ci,
                passed=passed,
                conclusive=conclusive,
                reason=reason,
            )
        )
    return results


def _percent(value: float) -> str:
    return f"{value * 100:.3g}%"


def _decimal(value: float) -> str:
    return f"{value:.4g}"


def verdict(results: Sequence[GateResult]) -> Literal["pass", "fail"]:
    """ "pass" when every gate passed; no gates at all is "pass" too (see ``gate_warnings``)."""
    return "pass" if all(r.passed for r in results) else "fail"


def gate_warnings(results: Sequence[GateResult]) -> list[str]:
    """What a reader of a verdict should know: no gates at all, or passes the interval does not back."""
    if not results:
        return ["no gates were evaluated: the verdict checks nothing (add gates to the policy)"]
    shaky = [r.gate for r in results if r.passed and r.conclusive is False]
    if shaky:
        return [
            f"{len(shaky)} gate(s) pass on the measured value but not across the 95% interval: "
            + ", ".join(shaky)
        ]
    return []
