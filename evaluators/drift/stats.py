"""The drift statistics, on sketches: PSI and KS for distributions, JS with chi-square for mixes, MMD.

Each takes the two sides' histograms (or samples) and returns the statistic
and, where it is a test, its p-value; scipy does the arithmetic (relative
entropy, the Kolmogorov distribution, chi-square, Jensen-Shannon, the
permutation test). A verdict needs both an effect at least the policy's
threshold and, for tests, p below alpha: with a million events a trivial shift
is "significant", and with fifty a large one may be noise.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps
from scipy.spatial.distance import jensenshannon
from scipy.special import rel_entr


@dataclass(frozen=True)
class Test:
    value: float
    p_value: float | None = None


def _quantile_groups(base: np.ndarray, groups: int) -> np.ndarray:
    """Fine-bin indices where each of up to ``groups`` baseline-quantile groups starts."""
    cum = np.cumsum(base)
    total = cum[-1]
    cuts = np.searchsorted(cum, total * np.arange(1, groups) / groups, side="right")
    starts = np.unique(np.concatenate([[0], np.minimum(cuts, len(base) - 1)]))
    return starts.astype(np.int64)


def psi(base: np.ndarray, cur: np.ndarray, groups: int = 10) -> Test:
    """Population stability index over (up to) ten baseline-decile groups of the fine bins.

    PSI = sum (c - b) ln(c / b) = KL(c || b) + KL(b || c), with half a count
    added to every group so an empty one stays finite.
    """
    starts = _quantile_groups(base, groups)
    b = np.add.reduceat(base, starts).astype(np.float64) + 0.5
    c = np.add.reduceat(cur, starts).astype(np.float64) + 0.5
    b, c = b / b.sum(), c / c.sum()
    return Test(float(np.sum(rel_entr(c, b) + rel_entr(b, c))))


def ks(base: np.ndarray, cur: np.ndarray) -> Test:
    """Two-sample Kolmogorov-Smirnov on binned data: the largest CDF gap at a bin edge.

    The p-value is scipy's asymptotic one for two samples (the Kolmogorov
    distribution at n = nm / (n + m)), as ``scipy.stats.ks_2samp(method="asymp")``.
    """
    n, m = int(base.sum()), int(cur.sum())
    d = float(np.max(np.abs(np.cumsum(base) / n - np.cumsum(cur) / m)))
    en = max(1, round(n * m / (n + m)))
    return Test(d, float(sps.kstwo.sf(d, en)))


def mix(base: Mapping[str, int], cur: Mapping[str, int]) -> tuple[Test, list[str]]:
    """Jensen-Shannon distance (base 2) of two category mixes, with a chi-square test of homogeneity.

    Also returns the categories present in ``cur`` and absent from ``base``.
    """
    categories = sorted(set(base) | set(cur))
    b = np.array([base.get(k, 0) for k in categories], dtype=np.float64)
    c = np.array([cur.get(k, 0) for k in categories], dtype=np.float64)
    new = [k for k in categories if not base.get(k) and cur.get(k)]
    keep = (b + c) > 0
    b, c = b[keep], c[keep]
    if len(b) < 2:
        return Test(0.0, 1.0), new
    js = float(jensenshannon(b / b.sum(), c / c.sum(), base=2))
    p = float(sps.chi2_contingency(np.vstack([b, c]), correction=False).pvalue)
    return Test(js, p), new


def mmd(x: np.ndarray, y: np.ndarray, *, permutations: int, seed: int = 0) -> Test:
    """Squared maximum mean discrepancy (RBF kernel, median-heuristic width) with a permutation p-value.

    The kernel matrix of the pooled sample is computed once; a permutation only
    relabels which rows are "baseline". MMD^2 is the quadratic form a'Ka with the
    diagonal removed, a = 1/n on one side and -1/m on the other, so it is near 0
    when nothing moved. ``scipy.stats.permutation_test`` draws the relabellings.
    """
    n, m = len(x), len(y)
    z = np.concatenate([x, y]).astype(np.float64)
    sq = np.sum(z * z, axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * z @ z.T, 0.0)
    upper = d2[np.triu_indices(len(z), k=1)]
    width = float(np.median(upper[upper > 0])) if np.any(upper > 0) else 1.0
    kernel = np.exp(-d2 / width)
    np.fill_diagonal(kernel, 0.0)

    def statistic(ix: np.ndarray, iy: np.ndarray, axis: int = -1) -> np.ndarray:
        ix, iy = np.atleast_2d(ix), np.atleast_2d(iy)
        weights = np.zeros((ix.shape[0], n + m))
        rows = np.arange(ix.shape[0])[:, None]
        weights[rows, ix] = 1.0 / n
        weights[rows, iy] = -1.0 / m
        out = np.einsum("bi,bi->b", weights @ kernel, weights)
        return out if out.shape[0] > 1 else out[:1]

    result = sps.permutation_test(
        (np.arange(n), np.arange(n, n + m)),
        statistic,
        permutation_type="independent",
        vectorized=True,
        n_resamples=permutations,
        alternative="greater",
        batch=50,
        random_state=np.random.default_rng(seed),
    )
    return Test(float(np.squeeze(result.statistic)), float(result.pvalue))
