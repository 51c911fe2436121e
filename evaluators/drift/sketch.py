"""Per-hour sketches: what the store keeps of many events, so reports never rescan them.

One ``Sketch`` per bucket (hour, policy, model, stage, source, audit run) holds
counts per action, entity type and policy version, a histogram per score
signal and of text lengths, and a bounded uniform reservoir of reduced
embeddings. Sketches add events in batches and merge with each other, so a
report over a month reads a few hundred rows.

Score histograms have fixed bins on the logit scale (200 bins over log-odds
-10..10): classifier scores crowd near 0 and 1, where equal-width bins would
put almost everything in one bin. Lengths use quarter-octave bins.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from evaluators.contracts.drift import DriftEvent
from evaluators.drift.embedding import REDUCED_DIM

SCORE_BINS = 200
Z_MIN, Z_MAX = -10.0, 10.0
LENGTH_BINS = 64
RESERVOIR = 256
"""Embeddings kept per bucket: a uniform sample of the bucket's events."""


def score_bins(values: np.ndarray) -> np.ndarray:
    """Bin index (0..199) of each score in [0, 1], on the logit scale."""
    p = np.clip(values.astype(np.float64), 1e-12, 1 - 1e-12)
    z = np.log(p) - np.log1p(-p)
    idx = np.floor((z - Z_MIN) / (Z_MAX - Z_MIN) * SCORE_BINS).astype(np.int64)
    return np.clip(idx, 0, SCORE_BINS - 1)


def score_edge(i: int | np.ndarray) -> Any:
    """The score at the lower edge of bin ``i`` (0 for bin 0, 1 for bin 200)."""
    z = Z_MIN + np.asarray(i, dtype=np.float64) * (Z_MAX - Z_MIN) / SCORE_BINS
    p = 1.0 / (1.0 + np.exp(-z))
    return np.where(np.asarray(i) <= 0, 0.0, np.where(np.asarray(i) >= SCORE_BINS, 1.0, p))


def length_bins(values: np.ndarray) -> np.ndarray:
    """Bin index (0..63) of each length: quarter octaves of 1 + length."""
    idx = np.floor(4 * np.log2(1 + values.astype(np.float64))).astype(np.int64)
    return np.clip(idx, 0, LENGTH_BINS - 1)


def length_edge(i: int) -> float:
    return float(2 ** (i / 4) - 1)


def hour_of(at: dt.datetime) -> dt.datetime:
    at = at if at.tzinfo else at.replace(tzinfo=dt.UTC)
    return at.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0)


@dataclass(frozen=True)
class BucketKey:
    """Which bucket an event lands in."""

    hour: dt.datetime
    policy: str
    model: str
    stage: str
    source: str
    run_id: str

    @classmethod
    def of(cls, e: DriftEvent) -> BucketKey:
        return cls(hour_of(e.at), e.policy, e.model, e.stage, e.source, e.run_id)


def _sparse(hist: np.ndarray) -> list[list[int]]:
    nz = np.flatnonzero(hist)
    return [[int(i), int(hist[i])] for i in nz]


def _dense(pairs: Iterable[Sequence[int]], size: int) -> np.ndarray:
    out = np.zeros(size, dtype=np.int64)
    for i, c in pairs:
        out[int(i)] += int(c)
    return out


@dataclass
class Totals:
    """The counts and histograms of some events; they add up across buckets."""

    count: int = 0
    actions: Counter[str] = field(default_factory=Counter)
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    entities: Counter[str] = field(default_factory=Counter)
    entity_events: int = 0
    lengths: np.ndarray = field(default_factory=lambda: np.zeros(LENGTH_BINS, dtype=np.int64))
    policies: Counter[str] = field(default_factory=Counter)

    def absorb(self, other: Totals) -> None:
        """Add ``other``'s counts and histograms to these."""
        self.count += other.count
        self.actions.update(other.actions)
        for k, v in other.scores.items():
            self.scores[k] = self.scores[k] + v if k in self.scores else v.copy()
        self.entities.update(other.entities)
        self.entity_events += other.entity_events
        self.lengths = self.lengths + other.lengths
        self.policies.update(other.policies)


@dataclass
class Sketch(Totals):
    """Aggregates of one bucket: counts, histograms and a reservoir of embeddings."""

    reservoir: np.ndarray = field(default_factory=lambda: np.zeros((0, REDUCED_DIM), dtype=np.float32))
    seen: int = 0
    """Events with an embedding the reservoir has seen."""

    def add(self, events: Sequence[DriftEvent], rng: np.random.Generator) -> None:
        """Fold ``events`` in; the reservoir stays a uniform sample of every embedding seen (Algorithm R)."""
        self.count += len(events)
        per_score: dict[str, list[float]] = {}
        lengths = np.empty(len(events), dtype=np.int64)
        new_vectors: list[tuple[float, ...]] = []
        for i, e in enumerate(events):
            self.actions[e.action.value] += 1
            self.policies[e.policy_sha256] += 1
            for name, value in e.scores.items():
                per_score.setdefault(name, []).append(value)
            if e.entities:
                self.entity_events += 1
                self.entities.update(e.entities)
            lengths[i] = e.length
            if e.embedding is not None:
                new_vectors.append(e.embedding)
        for name, values in per_score.items():
            hist = self.scores.get(name)
            if hist is None:
                hist = self.scores[name] = np.zeros(SCORE_BINS, dtype=np.int64)
            hist += np.bincount(score_bins(np.asarray(values)), minlength=SCORE_BINS)
        if len(events):
            self.lengths += np.bincount(length_bins(lengths), minlength=LENGTH_BINS)
        if new_vectors:
            self._sample(np.asarray(new_vectors, dtype=np.float32), rng)

    def _sample(self, vectors: np.ndarray, rng: np.random.Generator) -> None:
        room = max(0, RESERVOIR - len(self.reservoir))
        if room:
            self.reservoir = np.concatenate([self.reservoir, vectors[:room]])
        rest = vectors[room:]
        if len(rest):
            # Item t (0-based, counting every embedding seen) replaces a random slot with chance K/(t+1).
            t = self.seen + room + np.arange(len(rest))
            slots = rng.integers(0, t + 1)
            for j in np.flatnonzero(slots < RESERVOIR):
                self.reservoir[slots[j]] = rest[j]
        self.seen += len(vectors)

    # ------------------------------------------------------------------ storage form

    def to_json(self) -> dict[str, Any]:
        """Everything but the reservoir, as JSON (sparse histograms)."""
        return {
            "count": self.count,
            "actions": dict(self.actions),
            "scores": {k: _sparse(v) for k, v in sorted(self.scores.items())},
            "entities": dict(self.entities),
            "entity_events": self.entity_events,
            "lengths": _sparse(self.lengths),
            "policies": dict(self.policies),
            "seen": self.seen,
        }

    def reservoir_bytes(self) -> bytes:
        return self.reservoir.astype("<f4").tobytes()

    @classmethod
    def from_stored(cls, data: dict[str, Any], blob: bytes | None) -> Sketch:
        reservoir = np.frombuffer(blob or b"", dtype="<f4").reshape(-1, REDUCED_DIM).copy()
        return cls(
            count=int(data.get("count", 0)),
            actions=Counter(data.get("actions") or {}),
            scores={k: _dense(v, SCORE_BINS) for k, v in (data.get("scores") or {}).items()},
            entities=Counter(data.get("entities") or {}),
            entity_events=int(data.get("entity_events", 0)),
            lengths=_dense(data.get("lengths") or [], LENGTH_BINS),
            policies=Counter(data.get("policies") or {}),
            reservoir=reservoir,
            seen=int(data.get("seen", 0)),
        )


def aggregate(events: Iterable[DriftEvent]) -> dict[BucketKey, list[DriftEvent]]:
    """Events grouped by bucket, in arrival order."""
    groups: dict[BucketKey, list[DriftEvent]] = {}
    for e in events:
        groups.setdefault(BucketKey.of(e), []).append(e)
    return groups


@dataclass
class Merged(Totals):
    """Many buckets' sketches summed, with each bucket's reservoir kept apart for weighted sampling."""

    parts: list[tuple[np.ndarray, int]] = field(default_factory=list)
    buckets: int = 0

    def add(self, s: Sketch) -> None:
        self.buckets += 1
        self.absorb(s)
        if len(s.reservoir):
            self.parts.append((s.reservoir, s.seen))

    @property
    def embedded(self) -> int:
        """Events with an embedding."""
        return sum(seen for _, seen in self.parts)

    def sample_embeddings(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """About ``n`` embeddings, drawn from each bucket in proportion to the events it saw.

        Each bucket's reservoir is a uniform sample of that bucket, so a proportional
        draw is a uniform sample of the whole (short only where a bucket's share
        exceeds its reservoir).
        """
        total = self.embedded
        if not total:
            return np.zeros((0, REDUCED_DIM), dtype=np.float32)
        if n >= sum(len(r) for r, _ in self.parts) and all(len(r) == seen for r, seen in self.parts):
            return np.concatenate([r for r, _ in self.parts])
        # Largest-remainder allocation of n over the buckets by their counts.
        weights = np.array([seen for _, seen in self.parts], dtype=np.float64) / total
        quota = weights * n
        take = np.floor(quota).astype(np.int64)
        for i in np.argsort(-(quota - take))[: n - int(take.sum())]:
            take[i] += 1
        out = []
        for (reservoir, _), k in zip(self.parts, take, strict=True):
            k = min(int(k), len(reservoir))
            if k:
                out.append(reservoir[rng.choice(len(reservoir), size=k, replace=False)])
        return np.concatenate(out) if out else np.zeros((0, REDUCED_DIM), dtype=np.float32)


def merge(sketches: Iterable[Sketch]) -> Merged:
    m = Merged()
    for s in sketches:
        m.add(s)
    return m
