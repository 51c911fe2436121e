"""The worker's check batcher: concurrent jobs share one pass through the policy's checks, and each
gets exactly the decisions its texts would get alone."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from evaluators.checks.base import CheckInput
from evaluators.engine import Decision, PolicyEngine, Stage
from evaluators.findings import Action, Finding
from tests.unit.test_engine import FakeCheck, engine
from workers.check_batching import CheckBatcher


class GatedEngine:
    """Wraps an engine: records each batch, and can hold a batch until released."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.batches: list[list[str]] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def evaluate(self, texts: Sequence[str], stage: Stage, **kw: Any) -> list[Decision]:
        self.batches.append(list(texts))
        self.entered.set()
        assert self.release.wait(10), "batch never released"
        return self.inner.evaluate(texts, stage, **kw)  # type: ignore[no-any-return]


class ContextCheck:
    """Scores each text by what it was given: its context and its extras (to see they stay with it)."""

    name = "ctx"

    def load(self) -> None:
        pass

    def evaluate(self, batch: Sequence[CheckInput]) -> list[list[Finding]]:
        out = []
        for item in batch:
            score = len(item.context) / 10 + len(item.extra.get("samples", ())) / 100
            if "explode" in item.normalized.folded:
                raise RuntimeError("this text breaks the check")
            out.append([Finding("ctx", "n", score, 0.5, score >= 0.5, Action.FLAG, "fake")])
        return out


def view(d: Decision) -> tuple[Any, ...]:
    return (d.action, d.text, [(f.check, f.label, f.score, f.triggered) for f in d.findings], d.errors)


def _wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)


def test_an_idle_batcher_runs_a_lone_call_at_once_in_the_callers_thread() -> None:
    inner = engine((FakeCheck("a", "rude", Action.FLAG), Action.BLOCK))
    gated = GatedEngine(inner)
    batcher = CheckBatcher(gated, "t", "input")  # type: ignore[arg-type]
    (d,) = batcher.evaluate(["you are rude"])
    assert d.action is Action.FLAG
    assert gated.batches == [["you are rude"]] and batcher.batches == 1
    assert batcher.evaluate([]) == []  # nothing to check: no batch
    assert batcher.batches == 1


def test_what_queues_while_a_batch_runs_goes_as_one_batch() -> None:
    inner = engine(
        (FakeCheck("a", "rude", Action.FLAG), Action.BLOCK),
        (FakeCheck("b", "kill", Action.BLOCK), Action.BLOCK),
    )
    gated = GatedEngine(inner)
    batcher = CheckBatcher(gated, "t", "output")  # type: ignore[arg-type]
    gated.release.clear()
    texts = [
        [f"text {i}" + (" rude" if i % 3 == 0 else "") + (" kill" if i % 4 == 0 else "")] for i in range(9)
    ]
    texts[5] = ["two texts", "in one job, rude"]
    with ThreadPoolExecutor(len(texts)) as pool:
        first = pool.submit(batcher.evaluate, texts[0])
        assert gated.entered.wait(5)
        rest = [pool.submit(batcher.evaluate, t) for t in texts[1:]]
        _wait_for(lambda: len(batcher._queue) == len(texts) - 1)
        gated.release.set()
        got = [first.result(5)] + [f.result(5) for f in rest]
    # The first ran alone; everything that queued meanwhile ran as one batch.
    assert gated.batches == [texts[0], [t for job in texts[1:] for t in job]]
    for job, decisions in zip(texts, got, strict=True):
        assert [view(d) for d in decisions] == [view(d) for d in inner.evaluate(job, "output")]


def test_contexts_and_extras_stay_with_their_texts() -> None:
    inner = engine((ContextCheck(), Action.BLOCK))
    gated = GatedEngine(inner)
    batcher = CheckBatcher(gated, "t", "output")  # type: ignore[arg-type]
    calls: list[dict[str, Any]] = [
        {"texts": ["a", "b"], "contexts": [("c1",) * 5, ()], "extras": None},
        {"texts": ["c"], "contexts": None, "extras": [{"samples": ["s"] * 7}]},
        {"texts": ["d"], "contexts": None, "extras": None},
        {"texts": ["e"], "contexts": [("x",) * 2], "extras": [{"samples": ["s"] * 3}]},
    ]
    gated.release.clear()
    with ThreadPoolExecutor(len(calls) + 1) as pool:
        blocker = pool.submit(batcher.evaluate, ["warm"])
        assert gated.entered.wait(5)
        futures = [pool.submit(lambda c=c: batcher.evaluate(**c)) for c in calls]
        _wait_for(lambda: len(batcher._queue) == len(calls))
        gated.release.set()
        blocker.result(5)
        got = [f.result(5) for f in futures]
    assert len(gated.batches) == 2
    for call, decisions in zip(calls, got, strict=True):
        alone = inner.evaluate(call["texts"], "output", contexts=call["contexts"], extras=call["extras"])
        assert [view(d) for d in decisions] == [view(d) for d in alone]
    assert [f.score for d in got[0] + got[1] + got[3] for f in d.findings] == [0.5, 0.0, 0.07, 0.23]


class Exploding:
    """An engine that raises for a batch holding the word 'explode' (not a check error: the engine)."""

    def __init__(self, inner: PolicyEngine) -> None:
        self.inner = inner
        self.gated = GatedEngine(inner)

    def evaluate(self, texts: Sequence[str], stage: Stage, **kw: Any) -> list[Decision]:
        out = self.gated.evaluate(texts, stage, **kw)
        if any("explode" in t for t in texts):
            raise ValueError("bad text")
        return out


def test_a_failing_batch_is_retried_per_caller_and_fails_only_its_culprit() -> None:
    fake = Exploding(engine((FakeCheck("a", "rude", Action.FLAG), Action.BLOCK)))
    batcher = CheckBatcher(fake, "t", "input")  # type: ignore[arg-type]
    fake.gated.release.clear()
    with ThreadPoolExecutor(4) as pool:
        blocker = pool.submit(batcher.evaluate, ["first"])
        assert fake.gated.entered.wait(5)
        ok = pool.submit(batcher.evaluate, ["rude"])
        bad = pool.submit(batcher.evaluate, ["explode"])
        ok2 = pool.submit(batcher.evaluate, ["fine"])
        _wait_for(lambda: len(batcher._queue) == 3)
        fake.gated.release.set()
        blocker.result(5)
        assert ok.result(5)[0].action is Action.FLAG
        assert ok2.result(5)[0].action is Action.ALLOW
        with pytest.raises(ValueError, match="bad text"):
            bad.result(5)


def test_max_texts_splits_the_queue_but_never_a_call() -> None:
    inner = engine((FakeCheck("a", "rude", Action.FLAG), Action.BLOCK))
    gated = GatedEngine(inner)
    batcher = CheckBatcher(gated, "t", "input", max_texts=3)  # type: ignore[arg-type]
    gated.release.clear()
    jobs = [["1a", "1b"], ["2a"], ["3a", "3b"], ["4a", "4b", "4c", "4d"]]
    with ThreadPoolExecutor(5) as pool:
        blocker = pool.submit(batcher.evaluate, ["0"])
        assert gated.entered.wait(5)
        futures = []
        for job in jobs:  # one at a time, so they queue in this order
            futures.append(pool.submit(batcher.evaluate, job))
            queued = len(futures)
            _wait_for(lambda: len(batcher._queue) == queued)  # noqa: B023 (called at once)
        gated.release.set()
        blocker.result(5)
        got = [f.result(5) for f in futures]
    assert gated.batches == [["0"], ["1a", "1b", "2a"], ["3a", "3b"], ["4a", "4b", "4c", "4d"]]
    assert [len(d) for d in got] == [2, 1, 2, 4]


def test_many_threads_get_their_own_decisions() -> None:
    inner = engine(
        (FakeCheck("a", "rude", Action.FLAG), Action.BLOCK),
        (FakeCheck("b", "kill", Action.BLOCK), Action.BLOCK),
    )
    batcher = CheckBatcher(inner, "t", "input")
    jobs = [[f"job {i} " + ("rude " * (i % 2)) + ("kill" * (i % 5 == 0))] * (1 + i % 3) for i in range(64)]
    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(batcher.evaluate, jobs))
    for job, decisions in zip(jobs, got, strict=True):
        assert [view(d) for d in decisions] == [view(d) for d in inner.evaluate(job, "input")]
    assert batcher.batches <= len(jobs)
