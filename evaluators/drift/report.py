"""Drift reports: a window's sketches against a baseline's, signal by signal, with a verdict first.

Signals, per stage (input prompts, output answers):

- ``scores.<check.label>``: PSI and KS of the score distribution;
- ``length``: PSI and KS of text lengths;
- ``actions`` and ``entities``: Jensen-Shannon distance of the mix, tested with chi-square
  (entity types new in the window are named);
- ``embedding``: MMD^2 of reduced MiniLM embeddings with a permutation p-value.

Each statistic's threshold comes from the policy's ``drift:`` block. A signal
with fewer than ``min_samples`` on either side gets ``insufficient_data``,
never a silent pass.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from evaluators.contracts.drift import DriftReport, SignalResult, Stage, Statistic, Verdict
from evaluators.drift import stats
from evaluators.drift.config import DriftPolicy
from evaluators.drift.sketch import LENGTH_BINS, SCORE_BINS, Merged, length_edge, score_edge

STAGES: tuple[Stage, ...] = ("input", "output")
Progress = Callable[[str], None]


def _judged(name: str, test: stats.Test, threshold: float, alpha: float) -> Statistic:
    """A statistic against its threshold: drift when over it and, for a test, p < alpha."""
    drift = test.value > threshold and (test.p_value is None or test.p_value < alpha)
    return Statistic(
        name=name,
        value=round(test.value, 6),
        threshold=threshold,
        p_value=test.p_value,
        verdict="drift" if drift else "ok",
    )


def _signal(
    name: str,
    stage: Stage,
    kind: Any,
    n_b: int,
    n_w: int,
    statistics: list[Statistic],
    *,
    detail: str | None = None,
    chart: dict[str, Any] | None = None,
) -> SignalResult:
    verdicts = {s.verdict for s in statistics}
    verdict: Verdict = "drift" if "drift" in verdicts else ("ok" if "ok" in verdicts else "insufficient_data")
    return SignalResult(
        name=name,
        stage=stage,
        kind=kind,
        verdict=verdict,
        n_baseline=n_b,
        n_window=n_w,
        statistics=tuple(statistics),
        detail=detail,
        chart=chart or {},
    )


def _too_few(names: tuple[str, ...], policy: DriftPolicy, signal: str) -> list[Statistic]:
    t = policy.thresholds_for(signal)
    return [
        Statistic(name=n, value=None, threshold=getattr(t, n), verdict="insufficient_data") for n in names
    ]


def _fractions(hist: np.ndarray, group: int) -> list[float]:
    coarse = hist.reshape(-1, group).sum(axis=1).astype(np.float64)
    total = coarse.sum()
    return [round(float(v), 5) for v in (coarse / total if total else coarse)]


def _distribution(
    name: str,
    stage: Stage,
    kind: str,
    base: np.ndarray,
    cur: np.ndarray,
    policy: DriftPolicy,
    chart: dict[str, Any],
) -> SignalResult:
    n_b, n_w = int(base.sum()), int(cur.sum())
    if min(n_b, n_w) < policy.min_samples:
        return _signal(name, stage, kind, n_b, n_w, _too_few(("psi", "ks"), policy, name), chart=chart)
    t = policy.thresholds_for(name)
    return _signal(
        name,
        stage,
        kind,
        n_b,
        n_w,
        [
            _judged("psi", stats.psi(base, cur), t.psi, policy.alpha),
            _judged("ks", stats.ks(base, cur), t.ks, policy.alpha),
        ],
        chart=chart,
    )


def _score_chart(base: np.ndarray, cur: np.ndarray) -> dict[str, Any]:
    group = SCORE_BINS // 20
    edges = [round(float(score_edge(i)), 6) for i in range(0, SCORE_BINS + 1, group)]
    return {
        "type": "bins",
        "edges": edges,
        "baseline": _fractions(base, group),
        "window": _fractions(cur, group),
    }


def _length_chart(base: np.ndarray, cur: np.ndarray) -> dict[str, Any]:
    group = LENGTH_BINS // 16
    edges = [round(length_edge(i)) for i in range(0, LENGTH_BINS + 1, group)]
    return {
        "type": "bins",
        "edges": edges,
        "baseline": _fractions(base, group),
        "window": _fractions(cur, group),
    }


def _mix(
    name: str, stage: Stage, base: Mapping[str, int], cur: Mapping[str, int], policy: DriftPolicy
) -> SignalResult:
    n_b, n_w = sum(base.values()), sum(cur.values())
    categories = sorted(set(base) | set(cur), key=lambda k: -(base.get(k, 0) + cur.get(k, 0)))
    chart = {
        "type": "mix",
        "categories": categories,
        "baseline": [round(base.get(k, 0) / n_b, 5) if n_b else 0.0 for k in categories],
        "window": [round(cur.get(k, 0) / n_w, 5) if n_w else 0.0 for k in categories],
    }
    if min(n_b, n_w) < policy.min_samples:
        return _signal(name, stage, "mix", n_b, n_w, _too_few(("js",), policy, name), chart=chart)
    t = policy.thresholds_for(name)
    test, new = stats.mix(base, cur)
    detail = f"new in the window: {', '.join(new)}" if new else None
    statistic = _judged("js", test, t.js, policy.alpha)
    return _signal(name, stage, "mix", n_b, n_w, [statistic], detail=detail, chart=chart)


def _scatter(x: np.ndarray, y: np.ndarray, points: int = 120) -> dict[str, Any]:
    """The first two principal components of the pooled sample, a few points per side."""
    z = np.concatenate([x, y]).astype(np.float64)
    z = z - z.mean(axis=0)
    _, _, vt = np.linalg.svd(z, full_matrices=False)
    xy = z @ vt[:2].T
    scale = float(np.abs(xy).max()) or 1.0
    xy = xy / scale

    def pts(rows: np.ndarray) -> list[list[float]]:
        return [[round(float(a), 4), round(float(b), 4)] for a, b in rows[:points]]

    return {"type": "scatter", "baseline": pts(xy[: len(x)]), "window": pts(xy[len(x) :])}


def _embedding(
    name: str,
    stage: Stage,
    base: Merged,
    cur: Merged,
    policy: DriftPolicy,
    rng: np.random.Generator,
    seed: int,
) -> SignalResult:
    x = base.sample_embeddings(policy.embedding_sample, rng)
    y = cur.sample_embeddings(policy.embedding_sample, rng)
    n_b, n_w = base.embedded, cur.embedded
    if min(len(x), len(y)) < min(policy.min_samples, policy.embedding_sample):
        return _signal(name, stage, "embedding", n_b, n_w, _too_few(("mmd",), policy, name))
    t = policy.thresholds_for(name)
    test = stats.mmd(x, y, permutations=policy.permutations, seed=seed)
    statistic = _judged("mmd", test, t.mmd, policy.alpha)
    detail = f"{len(x)} and {len(y)} embeddings sampled"
    return _signal(name, stage, "embedding", n_b, n_w, [statistic], detail=detail, chart=_scatter(x, y))


def compare_stage(
    stage: Stage, base: Merged, cur: Merged, policy: DriftPolicy, *, seed: int = 0
) -> list[SignalResult]:
    """Every signal of one stage."""
    rng = np.random.default_rng(seed)
    out: list[SignalResult] = []
    for label in sorted(set(base.scores) | set(cur.scores)):
        if not policy.compares(label):
            continue
        b = base.scores.get(label, np.zeros(SCORE_BINS, dtype=np.int64))
        c = cur.scores.get(label, np.zeros(SCORE_BINS, dtype=np.int64))
        name = f"{stage}.scores.{label}"
        out.append(_distribution(name, stage, "score", b, c, policy, _score_chart(b, c)))
    name = f"{stage}.length"
    out.append(
        _distribution(
            name, stage, "length", base.lengths, cur.lengths, policy, _length_chart(base.lengths, cur.lengths)
        )
    )
    out.append(_mix(f"{stage}.actions", stage, base.actions, cur.actions, policy))
    out.append(_mix(f"{stage}.entities", stage, base.entities, cur.entities, policy))
    out.append(_embedding(f"{stage}.embedding", stage, base, cur, policy, rng, seed))
    return out


def build_report(
    *,
    report_id: str,
    policy_name: str,
    policy: DriftPolicy,
    baseline: Mapping[str, Merged],
    window: Mapping[str, Merged],
    baseline_info: dict[str, Any],
    window_info: dict[str, Any],
    model: str | None = None,
    trigger: Any = "api",
    seed: int = 0,
    progress: Progress | None = None,
) -> DriftReport:
    """Compare ``window`` with ``baseline`` (merged sketches per stage) under ``policy``'s thresholds."""
    started = time.perf_counter()
    signals: list[SignalResult] = []
    warnings: list[str] = []
    for stage in STAGES:
        b, w = baseline.get(stage, Merged()), window.get(stage, Merged())
        if not b.count and not w.count:
            continue
        if progress:
            progress(f"{stage}: {b.count} baseline and {w.count} window events")
        if not b.count:
            warnings.append(f"the baseline has no {stage} events")
        if not w.count:
            warnings.append(f"the window has no {stage} events")
        signals.extend(compare_stage(stage, b, w, policy, seed=seed))
        base_versions, cur_versions = set(b.policies), set(w.policies)
        if base_versions and cur_versions and base_versions != cur_versions:
            before = ", ".join(sorted(s[:12] for s in base_versions))
            after = ", ".join(sorted(s[:12] for s in cur_versions))
            warnings.append(f"{stage}: the policy changed between baseline ({before}) and window ({after})")
    drifted = tuple(s.name for s in signals if s.verdict == "drift")
    judged = any(s.verdict != "insufficient_data" for s in signals)
    verdict: Verdict = "drift" if drifted else ("ok" if judged else "insufficient_data")
    # Drifting signals first, then the rest in their order.
    ordered = sorted(signals, key=lambda s: {"drift": 0, "ok": 1, "insufficient_data": 2}[s.verdict])

    def counts(side: Mapping[str, Merged]) -> dict[str, int]:
        return {stage: side[stage].count for stage in STAGES if stage in side}

    return DriftReport(
        id=report_id,
        policy=policy_name,
        model=model,
        trigger=trigger,
        baseline={**baseline_info, "events": counts(baseline)},
        window={**window_info, "events": counts(window)},
        verdict=verdict,
        drifted=drifted,
        signals=tuple(ordered),
        thresholds={
            **policy.thresholds.model_dump(),
            "alpha": policy.alpha,
            "min_samples": policy.min_samples,
        },
        warnings=tuple(warnings),
        created_at=dt.datetime.now(dt.UTC),
        elapsed_ms=round((time.perf_counter() - started) * 1000, 1),
    )
