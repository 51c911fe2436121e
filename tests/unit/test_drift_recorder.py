"""The drift recorder never blocks: a full buffer drops and counts; a batch is acknowledged on commit."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Sequence

import numpy as np
import pytest

from devstack.drift_traffic import TrafficShape, random_pool, synthetic_events
from evaluators.contracts.drift import DriftEvent
from evaluators.drift.recorder import DriftRecorder
from evaluators.drift.sketch import RESERVOIR, Sketch

T0 = dt.datetime(2026, 3, 1, 9, tzinfo=dt.UTC)


def _events(n: int, seed: int = 0) -> list[DriftEvent]:
    return synthetic_events(
        n,
        shape=TrafficShape(),
        pools=[(random_pool(50, seed=1), 1.0)],
        start=T0,
        end=T0 + dt.timedelta(minutes=30),
        seed=seed,
    )


class GatedSink:
    """Holds every batch until the test opens the gate; fails loudly if written to after ``closed``."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.batches: list[list[DriftEvent]] = []
        self.closed = False

    def __call__(self, batch: Sequence[DriftEvent]) -> None:
        if self.closed:
            raise AssertionError("the recorder wrote after the test closed the sink")
        self.entered.set()
        if not self.gate.wait(timeout=60):
            raise AssertionError("the test never opened the gate")
        self.batches.append(list(batch))


class BrokenSink:
    """A store that is down: every write raises."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, batch: Sequence[DriftEvent]) -> None:
        self.calls += 1
        raise ConnectionError("database is down")


def test_a_full_buffer_drops_and_counts_instead_of_blocking() -> None:
    sink = GatedSink()
    recorder = DriftRecorder(sink, capacity=100, batch=40, interval_s=0.01)
    events = _events(250)
    assert recorder.record(events[:40]) == 40
    assert sink.entered.wait(timeout=30)  # the writer holds a batch of 40 in the (stuck) sink
    # The sink is stuck: these calls must return at once, keeping what fits and counting the rest.
    accepted = sum(recorder.record(events[i : i + 30]) for i in range(40, 250, 30))
    stats = recorder.stats()
    assert accepted == 60 and stats.dropped == 150 and stats.recorded == 100 and stats.pending == 100
    assert stats.acknowledged == 0
    sink.gate.set()
    assert recorder.flush(timeout=30)
    stats = recorder.stats()
    assert stats.acknowledged == 100 and stats.pending == 0 and stats.failed == 0
    assert sum(len(b) for b in sink.batches) == 100
    recorder.close()
    sink.closed = True
    assert recorder.record(events[:5]) == 0 and recorder.stats().dropped == 155


def test_a_failing_sink_is_retried_then_counted_as_failed() -> None:
    sink = BrokenSink()
    recorder = DriftRecorder(sink, batch=10, interval_s=0.01, retries=2, backoff_s=0.001)
    recorder.record(_events(10))
    assert recorder.flush(timeout=30) is False  # nothing acknowledged: the caller is told
    stats = recorder.stats()
    assert sink.calls == 3 and stats.failed == 10 and stats.acknowledged == 0
    recorder.close()


def test_the_reservoir_is_a_uniform_sample_of_every_embedding() -> None:
    from scipy import stats

    events = _events(20_000, seed=3)
    # Tag each embedded event by its position in the first coordinate, to see which ones were kept.
    tagged = []
    for i, e in enumerate(events):
        if e.embedding is not None:
            tagged.append(e.model_copy(update={"embedding": (float(i), *e.embedding[1:])}))
    sketch = Sketch()
    rng = np.random.default_rng(0)
    for start in range(0, len(tagged), 1000):
        sketch.add(tagged[start : start + 1000], rng)
    kept = sketch.reservoir[:, 0]
    assert len(kept) == RESERVOIR and sketch.seen == len(tagged) and len(set(kept)) == RESERVOIR
    # Positions kept are uniform over the stream (not the first, not the last ones).
    assert stats.kstest(kept / len(events), "uniform").pvalue > 0.001


def test_recorder_rejects_nonsense_sizes() -> None:
    with pytest.raises(ValueError, match="positive"):
        DriftRecorder(BrokenSink(), capacity=0)
