"""Planted shifts are flagged on the right signals and no others; a no-shift control passes.

Traffic is synthetic with fixed seeds (``devstack.drift_traffic``), except the
embeddings: two topics of real sentences (order support, medication questions)
embedded by the real MiniLM and projected to 32 dimensions, so the topic
change is measured in the space production uses. Every event goes through the
store's per-hour sketches, as in production.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from devstack.drift_traffic import HEALTH, SUPPORT, TrafficShape, synthetic_events, topic_texts
from evaluators.contracts.drift import DriftEvent, DriftReport, DriftStatus, TimeRange
from evaluators.drift.config import DriftPolicy, DriftThresholds
from evaluators.drift.embedding import REDUCED_DIM, embed
from evaluators.drift.profile import build_profile
from evaluators.drift.report import build_report
from evaluators.drift.sketch import Merged
from store.db import database, reset_stores
from store.drift import DriftStore

DAY0 = dt.datetime(2026, 2, 2, tzinfo=dt.UTC)
BASELINE = TimeRange.of(DAY0, DAY0 + dt.timedelta(days=1))
WINDOW = TimeRange.of(DAY0 + dt.timedelta(days=1), DAY0 + dt.timedelta(days=2))
USUAL = TrafficShape()
TOXIC_SIGNALS = {
    "output.scores.toxicity.toxicity",
    "output.scores.toxicity.insult",
    "output.scores.toxicity.profanity",
    "output.actions",
}


@pytest.fixture(scope="module")
def topics() -> dict[str, np.ndarray]:
    return {
        "support": embed(topic_texts(SUPPORT, 120, seed=1)),
        "health": embed(topic_texts(HEALTH, 120, seed=2)),
    }


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, topics: dict[str, np.ndarray]) -> Iterator[DriftStore]:
    url = f"sqlite:///{tmp_path_factory.mktemp('drift')}/assay.db"
    s = DriftStore(database(url), seed=0)
    for stage, seed in (("input", 1), ("output", 2)):
        s.write(_events(USUAL, [(topics["support"], 1.0)], BASELINE, seed, stage, n=2400))
    yield s
    reset_stores()


def _events(
    shape: TrafficShape,
    pools: list,
    when: TimeRange,
    seed: int,
    stage: Any,
    *,
    n: int,
    policy: str = "default",
) -> list[DriftEvent]:
    """Each scenario's window goes under its own policy name; every report reads the one baseline."""
    return synthetic_events(
        n, shape=shape, pools=pools, start=when.start, end=when.end, seed=seed, stage=stage, policy=policy
    )


def _report(store: DriftStore, policy_name: str, policy: DriftPolicy | None = None) -> DriftReport:
    return build_report(
        report_id=policy_name,
        policy_name=policy_name,
        policy=policy or DriftPolicy(),
        baseline=store.sketches("default", window=BASELINE),
        window=store.sketches(policy_name, window=WINDOW),
        baseline_info=BASELINE.wire(),
        window_info=WINDOW.wire(),
        seed=0,
    )


def _signals(report: DriftReport) -> set[str]:
    return {s.name for s in report.signals if s.verdict == "drift"}


def _judged(report: DriftReport) -> set[str]:
    return {s.name for s in report.signals if s.verdict != "insufficient_data"}


@pytest.fixture(scope="module")
def scenarios(store: DriftStore, topics: dict[str, np.ndarray]) -> dict[str, DriftReport]:
    support = [(topics["support"], 1.0)]
    mixed = [(topics["support"], 0.6), (topics["health"], 0.4)]
    plans = {
        "control": ({"input": USUAL, "output": USUAL}, {"input": support, "output": support}),
        "toxic": (
            {"input": USUAL, "output": TrafficShape(toxic_rate=0.2)},
            {"input": support, "output": support},
        ),
        "entity": (
            {"input": USUAL, "output": TrafficShape(entity_rates={**USUAL.entity_rates, "IBAN_CODE": 0.08})},
            {"input": support, "output": support},
        ),
        "topic": ({"input": USUAL, "output": USUAL}, {"input": mixed, "output": mixed}),
    }
    reports = {}
    for name, (shapes, pools) in plans.items():
        for stage, seed in (("input", 11), ("output", 12)):
            store.write(_events(shapes[stage], pools[stage], WINDOW, seed, stage, n=1200, policy=name))
        reports[name] = _report(store, name)
    return reports


def test_the_control_passes_on_every_signal(scenarios: dict[str, DriftReport]) -> None:
    report = scenarios["control"]
    assert report.verdict == "ok" and report.drifted == ()
    # Every signal was actually judged: nothing passed for lack of data.
    assert {"input.embedding", "output.embedding", "output.entities", "output.actions"} <= _judged(report)
    assert all(s.verdict == "ok" for s in report.signals)


def test_more_toxic_outputs_flag_toxicity_scores_and_actions_only(scenarios: dict[str, DriftReport]) -> None:
    report = scenarios["toxic"]
    assert report.verdict == "drift" and _signals(report) == TOXIC_SIGNALS
    tox = next(s for s in report.signals if s.name == "output.scores.toxicity.toxicity")
    ks = next(st for st in tox.statistics if st.name == "ks")
    assert ks.value is not None and ks.value > ks.threshold and ks.p_value is not None and ks.p_value < 1e-6
    assert tox.n_baseline == 2400 and tox.n_window == 1200


def test_a_new_entity_type_flags_the_entity_mix_only(scenarios: dict[str, DriftReport]) -> None:
    report = scenarios["entity"]
    assert _signals(report) == {"output.entities"}
    entities = next(s for s in report.signals if s.name == "output.entities")
    assert entities.detail == "new in the window: IBAN_CODE"
    assert "IBAN_CODE" in entities.chart["categories"]


def test_a_topic_change_flags_the_embeddings_only(scenarios: dict[str, DriftReport]) -> None:
    report = scenarios["topic"]
    assert _signals(report) == {"input.embedding", "output.embedding"}
    mmd = next(s for s in report.signals if s.name == "output.embedding").statistics[0]
    assert mmd.name == "mmd" and mmd.p_value is not None and mmd.p_value < 0.01
    assert mmd.value is not None and mmd.value > 2 * mmd.threshold  # power to spare at 32 dimensions


def test_policy_thresholds_decide_the_verdicts(store: DriftStore, scenarios: dict[str, DriftReport]) -> None:
    lenient = DriftPolicy(
        overrides={"output.actions": DriftThresholds(js=0.9)}, scores=("toxicity.hate", "toxicity.threat")
    )
    report = _report(store, "toxic", lenient)
    assert report.verdict == "ok"  # actions over a 0.9 JS threshold; toxicity.toxicity not compared
    assert not any(s.name.startswith("output.scores.toxicity.toxicity") for s in report.signals)
    assert report.thresholds["psi"] == 0.2 and report.thresholds["alpha"] == 0.01


def test_too_few_events_is_insufficient_not_ok(store: DriftStore) -> None:
    report = build_report(
        report_id="few",
        policy_name="default",
        policy=DriftPolicy(),
        baseline=store.sketches("default", window=BASELINE),
        window={"input": Merged(), "output": Merged()},
        baseline_info={},
        window_info={},
    )
    assert report.verdict == "insufficient_data" and report.drifted == ()
    assert "the window has no output events" in report.warnings


def test_single_results_are_scored_against_the_baseline(
    store: DriftStore, topics: dict[str, np.ndarray]
) -> None:
    profile = build_profile("launch", store.sketches("default", window=BASELINE))
    policy = DriftPolicy()
    rng = np.random.default_rng(5)

    def novelty(pool: np.ndarray) -> list[float]:
        out = []
        for v in pool[:40]:
            noisy = v + 0.05 * rng.standard_normal(REDUCED_DIM)
            score = profile.score("output", {}, noisy / np.linalg.norm(noisy), policy)
            assert score.status is DriftStatus.SCORED and score.novelty is not None
            out.append(score.novelty)
        return out

    usual, new = novelty(topics["support"]), novelty(topics["health"])
    assert (
        np.median(usual) < 80 and min(new) >= 99
    )  # every off-topic item is beyond the baseline's own spread
    toxic = profile.score("output", {"toxicity.insult": 0.9, "pii.PERSON": 0.99}, None, policy)
    assert toxic.scores["toxicity.insult"] > 95 and "pii.PERSON" not in toxic.scores
    assert (
        toxic.novelty is None
        and toxic.unusual is None
        and toxic.detail == "no filtered text to embed (blocked)"
    )
    calm = profile.score("output", {"toxicity.insult": 0.001}, None, policy)
    assert calm.scores["toxicity.insult"] < 60
