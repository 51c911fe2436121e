"""A baseline's profile for per-result drift: score CDFs and a sample of embeddings, ready to query.

``score`` is what every moderation and generation result carries as ``drift``:
where the item's scores fall in the baseline's distributions (percentiles), and
how far its embedding is from its nearest baseline neighbours compared with
how far the baseline's own items are from theirs (the novelty percentile).
Both are a few microseconds once the profile is built: a cumulative-sum lookup
per score and one (1024 x 32) matrix-vector product.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from evaluators.contracts.drift import DriftScore, DriftStatus, Stage
from evaluators.drift.config import DriftPolicy
from evaluators.drift.sketch import Merged, score_bins

PROFILE_SAMPLE = 1024
"""Baseline embeddings a profile keeps for nearest-neighbour distances."""
NEIGHBOURS = 5


def _knn_distance(sims: np.ndarray, k: int) -> np.ndarray:
    """1 - mean of the ``k`` largest similarities per row."""
    k = min(k, sims.shape[1])
    top = np.partition(sims, sims.shape[1] - k, axis=1)[:, -k:]
    return np.asarray(1.0 - top.mean(axis=1))


@dataclass
class StageProfile:
    n: int
    cdfs: dict[str, np.ndarray] = field(default_factory=dict)
    """Per score signal: cumulative counts over the fine bins (last = total)."""
    embeddings: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))
    own: np.ndarray = field(default_factory=lambda: np.zeros(0))
    """Sorted leave-one-out neighbour distances of the baseline sample."""

    def score_percentiles(self, scores: Mapping[str, float]) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, value in scores.items():
            cdf = self.cdfs.get(name)
            if cdf is None or not cdf[-1]:
                continue
            i = int(score_bins(np.asarray([value]))[0])
            below = cdf[i - 1] if i else 0
            within = cdf[i] - below
            out[name] = round(float((below + within / 2) / cdf[-1] * 100), 2)
        return out

    def novelty(self, vector: np.ndarray) -> tuple[float, float] | None:
        """(percentile, distance) of ``vector`` against the baseline sample; None without one."""
        if len(self.own) == 0:
            return None
        distance = float(_knn_distance((self.embeddings @ vector)[None, :], NEIGHBOURS)[0])
        below = np.searchsorted(self.own, distance, side="left")
        equal = np.searchsorted(self.own, distance, side="right") - below
        return round(float((below + equal / 2) / len(self.own) * 100), 2), round(distance, 6)


@dataclass
class BaselineProfile:
    """What per-result scoring needs of one baseline, per stage."""

    name: str
    stages: dict[str, StageProfile]
    built_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))

    def score(
        self,
        stage: Stage,
        scores: Mapping[str, float],
        vector: np.ndarray | None,
        policy: DriftPolicy,
        no_vector: str = "no filtered text to embed (blocked)",
    ) -> DriftScore:
        profile = self.stages.get(stage)
        if profile is None or profile.n == 0:
            return DriftScore(
                status=DriftStatus.NO_BASELINE,
                stage=stage,
                baseline=self.name,
                detail=f"baseline {self.name!r} has no {stage} events",
            )
        percentiles = profile.score_percentiles({k: v for k, v in scores.items() if policy.compares(k)})
        found = profile.novelty(vector) if vector is not None else None
        novelty, distance = found if found is not None else (None, None)
        return DriftScore(
            status=DriftStatus.SCORED,
            stage=stage,
            baseline=self.name,
            novelty=novelty,
            distance=distance,
            scores=percentiles,
            unusual=None if novelty is None else novelty >= policy.novelty_percentile,
            detail=None if vector is not None else no_vector,
        )


def build_profile(name: str, merged: Mapping[str, Merged], *, seed: int = 0) -> BaselineProfile:
    """The profile of a baseline's merged sketches (per stage)."""
    rng = np.random.default_rng(seed)
    stages: dict[str, StageProfile] = {}
    for stage, m in merged.items():
        profile = StageProfile(n=m.count, cdfs={k: np.cumsum(v) for k, v in m.scores.items()})
        sample = m.sample_embeddings(PROFILE_SAMPLE, rng)
        if len(sample) > NEIGHBOURS:
            sims = sample @ sample.T
            np.fill_diagonal(sims, -np.inf)
            profile.embeddings = sample
            profile.own = np.sort(_knn_distance(sims, NEIGHBOURS))
        stages[stage] = profile
    return BaselineProfile(name=name, stages=stages)
