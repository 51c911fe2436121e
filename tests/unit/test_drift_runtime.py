"""DriftRuntime: one event per text, a drift score per result, and never a failed request because of drift."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Sequence

import numpy as np

from devstack.drift_traffic import TrafficShape, random_pool, synthetic_events
from evaluators.contracts.drift import DriftEvent, DriftStatus
from evaluators.drift.embedding import REDUCED_DIM
from evaluators.drift.profile import BaselineProfile, build_profile
from evaluators.drift.recorder import DriftRecorder
from evaluators.drift.runtime import DriftRuntime, Observation, ProfileCache
from evaluators.drift.sketch import Sketch, merge
from evaluators.findings import Action
from evaluators.policy import LoadedPolicy, parse_policy

T0 = dt.datetime(2026, 3, 2, tzinfo=dt.UTC)
POOL = random_pool(80, seed=2)


def _policy(drift: str = "{embed_inline: true}") -> LoadedPolicy:
    return parse_policy(f"name: p\nversion: '1'\ndrift: {drift}\n", "p.yaml")


def _profile() -> BaselineProfile:
    sketch = Sketch()
    events = synthetic_events(
        600, shape=TrafficShape(), pools=[(POOL, 1.0)], start=T0, end=T0 + dt.timedelta(hours=1), seed=1
    )
    sketch.add(events, np.random.default_rng(0))
    return build_profile("b1", {"output": merge([sketch])})


class Collected:
    """A sink that keeps what it is given (the store's place in these tests)."""

    def __init__(self) -> None:
        self.events: list[DriftEvent] = []

    def __call__(self, batch: Sequence[DriftEvent]) -> None:
        self.events.extend(batch)


def _embed_pool(texts: Sequence[str]) -> np.ndarray:
    return POOL[: len(texts)]


def _no_embedding(texts: Sequence[str]) -> np.ndarray:
    raise AssertionError("the runtime embedded a text although the policy turned embeddings off")


def _broken_encoder(texts: Sequence[str]) -> np.ndarray:
    raise OSError("model files missing")


def _item(text: str | None = "hello", insult: float = 0.01) -> Observation:
    return Observation(
        stage="output",
        source="moderation",
        action=Action.ALLOW if text else Action.BLOCK,
        scores={"toxicity.insult": insult, "pii.PERSON": 0.9},
        entities={"PERSON": 1},
        length=42,
        text=text,
    )


def _runtime(embed: object, loader: object = None) -> tuple[DriftRuntime, Collected]:
    sink = Collected()
    profile = _profile()
    cache = ProfileCache(loader or (lambda _lp, _model: profile))  # type: ignore[arg-type]
    return DriftRuntime(DriftRecorder(sink, interval_s=0.01), cache, embed=embed), sink  # type: ignore[arg-type]


def test_each_text_is_recorded_and_scored() -> None:
    runtime, sink = _runtime(_embed_pool)
    scores = runtime.observe(_policy(), [_item("a"), _item(None, insult=0.95)])
    assert runtime.flush(10)
    assert [e.embedding is not None for e in sink.events] == [True, False]
    e = sink.events[0]
    assert (
        e.policy == "p"
        and e.entities == {"PERSON": 1}
        and e.length == 42
        and len(e.embedding or ()) == REDUCED_DIM
    )
    first, blocked = scores
    assert first.status is DriftStatus.SCORED and first.baseline == "b1" and first.novelty is not None
    assert (
        blocked.novelty is None
        and blocked.scores["toxicity.insult"] > 95
        and "pii.PERSON" not in blocked.scores
    )
    runtime.close()


def test_by_default_the_recorder_embeds_after_the_reply() -> None:
    calls: list[tuple[str, list[str]]] = []

    def encoder(texts: Sequence[str]) -> np.ndarray:
        calls.append((threading.current_thread().name, list(texts)))
        return POOL[: len(texts)]

    runtime, sink = _runtime(encoder)
    first, blocked = runtime.observe(_policy("{}"), [_item("a"), _item(None, insult=0.95)])
    # Scored from the score percentiles at once; novelty waits for the recorder.
    assert first.status is DriftStatus.SCORED and first.novelty is None and first.scores
    assert "embed_inline" in str(first.detail) and "blocked" in str(blocked.detail)
    assert runtime.flush(10)
    assert calls == [("assay-drift-recorder", ["a"])]  # the writer thread, only the filtered text
    assert [e.embedding is not None for e in sink.events] == [True, False]
    assert sink.events[0].embedding == tuple(float(x) for x in POOL[0])
    runtime.close()


def test_a_sampled_policy_embeds_a_uniform_share_after_the_reply() -> None:
    runtime, sink = _runtime(lambda texts: POOL[: len(texts)])
    runtime._rng = np.random.default_rng(5)
    for _ in range(10):
        runtime.observe(_policy("{embed_sample: 0.25}"), [_item(f"t{i}") for i in range(40)])
    assert runtime.flush(10) and len(sink.events) == 400
    embedded = sum(e.embedding is not None for e in sink.events)
    assert 70 <= embedded <= 130  # Binomial(400, 0.25): mean 100, sd 8.7
    # Inline scoring always embeds, whatever the share: the result needs its novelty.
    [score] = runtime.observe(_policy("{embed_sample: 0.25, embed_inline: true}"), [_item("x")])
    assert score.novelty is not None
    runtime.close()


def test_a_deferred_encoder_failure_still_writes_the_event_and_counts_it() -> None:
    runtime, sink = _runtime(_broken_encoder)
    runtime.observe(_policy("{}"), [_item("a"), _item("b")])
    assert runtime.flush(10) and [e.embedding for e in sink.events] == [None, None]
    assert runtime.recorder is not None and runtime.recorder.stats().unembedded == 2
    runtime.close()


def test_embeddings_off_never_runs_the_encoder() -> None:
    runtime, sink = _runtime(_no_embedding)
    [score] = runtime.observe(_policy("{embed: false}"), [_item("a")])
    assert runtime.flush(10) and sink.events[0].embedding is None
    assert (
        score.status is DriftStatus.SCORED
        and score.novelty is None
        and "embeddings are off" in str(score.detail)
    )
    runtime.close()


def test_disabled_policies_record_nothing_and_say_so() -> None:
    runtime, sink = _runtime(_no_embedding)
    [score] = runtime.observe(_policy("{enabled: false}"), [_item("a")])
    assert runtime.flush(10) and sink.events == []
    assert score.status is DriftStatus.DISABLED and score.novelty is None
    runtime.close()


def test_a_broken_encoder_or_store_degrades_to_unavailable_not_an_error() -> None:
    runtime, sink = _runtime(_broken_encoder)
    [score] = runtime.observe(_policy(), [_item("a")])
    assert score.status is DriftStatus.SCORED and score.novelty is None and "OSError" in str(score.detail)
    assert runtime.flush(10) and len(sink.events) == 1  # the event is kept, without its embedding

    def down(_lp: LoadedPolicy, _model: str) -> BaselineProfile | None:
        raise ConnectionError("database is down")

    runtime2, sink2 = _runtime(_embed_pool, loader=down)
    [score] = runtime2.observe(_policy(), [_item("a")])
    assert score.status is DriftStatus.UNAVAILABLE and "ConnectionError" in str(score.detail)
    assert runtime2.flush(10) and len(sink2.events) == 1
    runtime.close()
    runtime2.close()


def test_profiles_are_reused_then_reloaded_in_the_background() -> None:
    loads: list[str] = []
    gate = threading.Event()
    profiles = [None, _profile()]

    def loader(lp: LoadedPolicy, model: str) -> BaselineProfile | None:
        loads.append(model)
        if len(loads) > 1:
            gate.wait(10)
        return profiles[min(len(loads), 2) - 1]

    cache = ProfileCache(loader, ttl_s=0.05)
    lp = _policy()
    assert cache.get(lp, "m") is None and loads == ["m"]
    assert cache.get(lp, "m") is None and loads == ["m"]  # fresh: no second load
    time.sleep(0.1)
    assert cache.get(lp, "m") is None  # stale: the old value at once, a reload in the background
    gate.set()
    deadline = time.monotonic() + 10
    while not isinstance(cache.get(lp, "m"), BaselineProfile) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert isinstance(cache.get(lp, "m"), BaselineProfile) and loads == ["m", "m"]
    cache.invalidate("p")
    cache.get(lp, "m")
    assert len(loads) == 3
