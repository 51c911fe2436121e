"""Targets, counts with Wilson intervals, the threshold search, and held-out figures."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from evaluators.calibration.errors import CalibrationError
from evaluators.policy import HeldOut, OperatingPoint, ScoreScaling

Z95 = 1.959963984540054
LOG_LOSS_EPS = 1e-6


@dataclass(frozen=True)
class Target:
    """What a fitted threshold aims for.

    ``precision``/``recall``: the minimum to reach, then the best other metric.
    ``fbeta``: the F-beta score to maximise (``value`` is beta; f1 is beta 1).
    """

    metric: Literal["precision", "recall", "fbeta"]
    value: float

    def __str__(self) -> str:
        if self.metric == "fbeta":
            return "f1" if self.value == 1 else f"fbeta={self.value:g}"
        return f"{self.metric}>={self.value:g}"


def parse_target(text: str) -> Target:
    """``precision=0.9`` (or ``>=``), ``recall=0.8``, ``f1`` or ``fbeta=0.5``."""
    spec = text.strip().lower().replace(" ", "")
    if spec == "f1":
        return Target("fbeta", 1.0)
    m = re.fullmatch(r"(precision|recall|fbeta)>?=([0-9]*\.?[0-9]+)", spec)
    if not m:
        raise CalibrationError(
            f"target {text!r} not understood; use precision=P, recall=R (0 < P, R <= 1), f1 or fbeta=B"
        )
    metric, value = m.group(1), float(m.group(2))
    if metric == "fbeta":
        if not 0 < value <= 100:
            raise CalibrationError(f"target {text!r}: beta must be above 0")
        return Target("fbeta", value)
    if not 0 < value <= 1:
        raise CalibrationError(f"target {text!r}: {metric} must be above 0 and at most 1")
    return Target("precision" if metric == "precision" else "recall", value)


def wilson(successes: int, trials: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson score interval of a proportion; None when there are no trials."""
    if trials <= 0:
        return None
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    # The bounds are exactly 0 and 1 at the extremes; floating point lands a hair inside.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == trials else min(1.0, centre + half)
    return (low, high)


@dataclass(frozen=True)
class Counts:
    """What one threshold selects among labelled examples."""

    threshold: float
    selected: int
    true_positives: int
    positives: int
    n: int

    @property
    def precision(self) -> float | None:
        return self.true_positives / self.selected if self.selected else None

    @property
    def recall(self) -> float:
        return self.true_positives / self.positives if self.positives else 0.0

    def point(self) -> OperatingPoint:
        p_ci = wilson(self.true_positives, self.selected)
        r_ci = wilson(self.true_positives, self.positives) or (0.0, 1.0)
        return OperatingPoint(
            threshold=self.threshold,
            selected=self.selected,
            true_positives=self.true_positives,
            precision=_r(self.precision),
            precision_ci=_ri(p_ci),
            recall=round(self.recall, 4),
            recall_ci=(round(r_ci[0], 4), round(r_ci[1], 4)),
        )


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def _ri(ci: tuple[float, float] | None) -> tuple[float, float] | None:
    return None if ci is None else (round(ci[0], 4), round(ci[1], 4))


def counts_at(
    scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray, threshold: float
) -> Counts:
    """Counts at ``threshold``, with the checks' rule: a score at or above it triggers."""
    s = np.asarray(scores, dtype=float)
    y = np.asarray(labels, dtype=int)
    sel = s >= threshold
    return Counts(
        threshold=threshold,
        selected=int(sel.sum()),
        true_positives=int((sel & (y == 1)).sum()),
        positives=int((y == 1).sum()),
        n=len(y),
    )


@dataclass(frozen=True)
class Fit:
    """A fitted threshold; ``threshold`` is None when no threshold selects any example."""

    threshold: float | None
    reached: bool


def _place(lower: float, upper: float) -> float:
    """A short decimal in ``(lower, upper]``, near the middle of the gap.

    Any value in the gap selects the same examples; the middle leaves the most
    margin on both sides, and a short number reads better in a policy.
    """
    mid = (lower + upper) / 2
    for digits in range(1, 9):
        r = round(mid, digits)
        if lower < r <= upper:
            return r
    return upper


def fit_threshold(
    scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray, target: Target
) -> Fit:
    """The threshold that meets ``target`` with the best other metric.

    precision>=P: highest recall among thresholds with precision >= P (then
    higher precision, then fewer texts selected). recall>=R: highest precision
    among thresholds with recall >= R (then higher recall). fbeta: highest
    F-beta (then higher precision). Candidates are the distinct positive
    scores; a text with score 0 has no finding in production, so a threshold
    that would select it is never offered. When the target cannot be met the
    fit is the best effort for its metric and ``reached`` is False.
    """
    s = np.asarray(scores, dtype=float)
    y = np.asarray(labels, dtype=int)
    if s.shape != y.shape or s.ndim != 1:
        raise ValueError("scores and labels must be 1-d and of the same length")
    positives = int(y.sum())
    if positives == 0:
        raise CalibrationError("cannot fit a threshold without positive examples")
    distinct = np.unique(s)[::-1]  # descending
    candidates = distinct[distinct > 0]
    if len(candidates) == 0:
        return Fit(None, False)
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    last = np.searchsorted(-s_sorted, -candidates, side="right") - 1
    tp = np.cumsum(y_sorted)[last].astype(float)
    selected = (last + 1).astype(float)
    precision = tp / selected
    recall = tp / positives
    height = candidates  # higher threshold: fewer texts selected
    if target.metric == "precision":
        ok = precision >= target.value - 1e-12
        keys = (height, precision, recall) if ok.any() else (height, recall, precision)
    elif target.metric == "recall":
        ok = recall >= target.value - 1e-12
        keys = (height, recall, precision) if ok.any() else (height, precision, recall)
    else:
        b2 = target.value**2
        denom = b2 * precision + recall
        f = np.where(denom > 0, (1 + b2) * precision * recall / np.where(denom > 0, denom, 1), 0.0)
        ok = f > 0
        keys = (height, precision, f)
    pool = np.flatnonzero(ok) if ok.any() else np.arange(len(candidates))
    # lexsort sorts by the last key first; take the best of the pool.
    best = pool[np.lexsort(tuple(k[pool] for k in keys))[-1]]
    upper = float(candidates[best])
    below = distinct[distinct < upper]
    lower = float(below[0]) if len(below) else 0.0
    return Fit(_place(max(lower, 0.0), upper), bool(ok.any()))


def _folds(labels: np.ndarray, folds: int) -> int:
    positives = int(labels.sum())
    return min(folds, positives, len(labels) - positives)


def held_out(
    scores: np.ndarray, labels: np.ndarray, target: Target, *, folds: int = 5, seed: int = 0
) -> HeldOut | None:
    """Cross-validated precision and recall of the fitting procedure itself.

    The in-sample operating point is optimistic (the threshold was chosen on
    those very examples); this fits on k-1 stratified folds, measures on the
    fold left out and pools the counts.
    """
    from sklearn.model_selection import StratifiedKFold

    k = _folds(labels, folds)
    if k < 2:
        return None
    tp = sel = 0
    for train, test in StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(scores, labels):
        fit = fit_threshold(scores[train], labels[train], target)
        if fit.threshold is None:
            continue
        c = counts_at(scores[test], labels[test], fit.threshold)
        tp += c.true_positives
        sel += c.selected
    positives = int(labels.sum())
    r_ci = wilson(tp, positives) or (0.0, 1.0)
    return HeldOut(
        folds=k,
        precision=_r(tp / sel) if sel else None,
        precision_ci=_ri(wilson(tp, sel)),
        recall=round(tp / positives, 4),
        recall_ci=(round(r_ci[0], 4), round(r_ci[1], 4)),
    )


def compare_scaling(
    scores: np.ndarray, labels: np.ndarray, *, folds: int = 5, seed: int = 0
) -> ScoreScaling | None:
    """Held-out Brier score and log-loss of raw, Platt-scaled and isotonic scores.

    Platt scaling is a logistic regression on the score's logit; isotonic is
    scikit-learn's ``IsotonicRegression``. Both are fitted on k-1 folds and
    scored on the fold left out. Probabilities are clipped to [1e-6, 1 - 1e-6]
    for the log-loss.
    """
    from sklearn.isotonic import IsotonicRegression
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    k = _folds(labels, folds)
    if k < 2:
        return None
    raw = np.clip(scores, 0.0, 1.0)
    logit = np.log(np.clip(raw, LOG_LOSS_EPS, 1 - LOG_LOSS_EPS) / np.clip(1 - raw, LOG_LOSS_EPS, 1))
    preds: dict[Literal["raw", "platt", "isotonic"], np.ndarray] = {
        "raw": raw,
        "platt": np.zeros_like(raw),
        "isotonic": np.zeros_like(raw),
    }
    for train, test in StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(raw, labels):
        platt = LogisticRegression(C=1e4).fit(logit[train, None], labels[train])
        preds["platt"][test] = platt.predict_proba(logit[test, None])[:, 1]
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(raw[train], labels[train])
        preds["isotonic"][test] = iso.predict(raw[test])
    brier = {m: round(float(np.mean((p - labels) ** 2)), 4) for m, p in preds.items()}
    losses = {}
    for m, p in preds.items():
        q = np.clip(p, LOG_LOSS_EPS, 1 - LOG_LOSS_EPS)
        losses[m] = round(float(-np.mean(labels * np.log(q) + (1 - labels) * np.log(1 - q))), 4)
    best = min(brier, key=lambda m: (brier[m], m != "raw"))  # a tie keeps the raw scores
    return ScoreScaling(brier=brier, log_loss=losses, best=best)
