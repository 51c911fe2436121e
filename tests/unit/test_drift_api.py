"""Drift through the real app: every moderation result carries ``drift``; baselines and report requests."""

from __future__ import annotations

import datetime as dt
from typing import Any

from devstack.drift_traffic import SUPPORT_QUESTIONS

TEXTS = SUPPORT_QUESTIONS


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _recorded(api_client: Any) -> None:
    """Wait until this process's recorder has committed what it holds (acknowledged events)."""
    assert api_client.app.state.assay.drift.flush(timeout=60)


def test_results_say_there_is_no_baseline_rather_than_zero(api_client: Any) -> None:
    body = api_client.post(
        "/v1/moderate", json={"text": "Hello, where is my parcel?", "policy": "strict"}
    ).json()
    drift = body["drift"]
    assert drift["status"] == "no_baseline" and drift["stage"] == "output"
    assert "no drift baseline" in drift["detail"]
    assert drift["novelty"] is None and drift["scores"] == {} and drift["unusual"] is None
    stats = api_client.get("/v1/drift/recorder").json()["recorder"]
    assert stats["recorded"] >= 1 and stats["dropped"] == 0 and stats["capacity"] > 0


def test_results_are_scored_once_the_policy_has_a_baseline(api_client: Any) -> None:
    # Baseline traffic: order-support questions through the grounded policy's inline path.
    started = _now()
    for _ in range(3):
        r = api_client.post("/v1/moderate/batch", json={"texts": TEXTS, "policy": "grounded"})
        assert r.status_code == 200, r.text
    _recorded(api_client)
    window = {
        "from": (started - dt.timedelta(hours=1)).isoformat(),
        "to": (_now() + dt.timedelta(hours=1)).isoformat(),
    }
    created = api_client.post("/v1/drift/baselines", json={"name": "support", "policy": "grounded", **window})
    assert created.status_code == 201, created.text
    assert (
        created.json()["name"] == "support" and created.json()["audit"] if "audit" in created.json() else True
    )

    usual = api_client.post("/v1/moderate", json={"text": TEXTS[1], "policy": "grounded"}).json()["drift"]
    odd = api_client.post(
        "/v1/moderate",
        json={"text": "Quantum chromodynamics describes gluon confinement.", "policy": "grounded"},
    ).json()["drift"]
    for drift in (usual, odd):
        assert drift["status"] == "scored" and drift["baseline"] == "support"
        assert 0 <= drift["novelty"] <= 100 and drift["distance"] is not None
        assert set(drift["scores"]) >= {"toxicity.insult", "toxicity.hate"}  # PII scores left out by default
    # Other tests moderate under this policy in the same hour's buckets: the bounds are loose.
    assert odd["novelty"] >= 90 and odd["novelty"] - usual["novelty"] >= 40
    assert odd["unusual"] is (odd["novelty"] >= 99) and usual["unusual"] is False


def test_moderation_under_a_deferred_policy_embeds_in_the_recorder_thread(
    api_client: Any, monkeypatch: Any
) -> None:
    # `default` leaves drift.embed_inline unset: /v1/moderate replies without the MiniLM
    # pass, and the recorder's thread embeds the texts before they are written.
    import threading

    lp = api_client.app.state.assay.policies.get("default")
    assert lp.policy.drift.embed_inline is None and not lp.policy.drift.inline_for("moderation")
    recorder = api_client.app.state.assay.drift.recorder
    encoder, seen = recorder.embed, []

    def spy(texts: Any) -> Any:
        seen.append((threading.current_thread().name, len(texts)))
        return encoder(texts)

    monkeypatch.setattr(recorder, "embed", spy)
    unembedded = recorder.stats().unembedded
    r = api_client.post("/v1/moderate/batch", json={"texts": TEXTS, "policy": "default"})
    assert r.status_code == 200, r.text
    assert all(res["drift"]["novelty"] is None for res in r.json()["results"])
    _recorded(api_client)
    assert {name for name, _ in seen} == {"assay-drift-recorder"} and sum(n for _, n in seen) == len(TEXTS)
    assert recorder.stats().unembedded == unembedded


def test_baseline_and_report_requests_get_problem_details(api_client: Any) -> None:
    now = _now()
    window = {"from": (now - dt.timedelta(hours=2)).isoformat(), "to": now.isoformat()}
    # No baseline for the default policy yet: say so before anything is queued.
    r = api_client.post("/v1/drift/reports", json={"policy": "default", "window": window})
    assert r.status_code == 404 and r.headers["content-type"].startswith("application/problem+json")
    assert "no drift baseline" in r.json()["detail"]
    r = api_client.post(
        "/v1/drift/reports", json={"policy": "default", "baseline": {"name": "nope"}, "window": window}
    )
    assert r.status_code == 404 and "no baseline named 'nope'" in r.json()["detail"]
    r = api_client.post("/v1/drift/reports", json={"policy": "unknown", "window": window})
    assert r.status_code == 404 and r.json()["type"].endswith("policy-not-found")
    backwards = {"from": window["to"], "to": window["from"]}
    r = api_client.post("/v1/drift/reports", json={"policy": "default", "window": backwards})
    assert r.status_code == 400 and "'to' must be after 'from'" in r.text
    both = {"name": "x", "from": window["from"], "to": window["to"]}
    r = api_client.post("/v1/drift/reports", json={"policy": "default", "baseline": both, "window": window})
    assert r.status_code == 400 and "exactly one of" in r.text

    r = api_client.post(
        "/v1/drift/baselines", json={"name": "a1", "policy": "default", "audit": "no-such-run"}
    )
    assert r.status_code == 404 and "no audit run" in r.json()["detail"]
    r = api_client.post("/v1/drift/baselines", json={"name": "w", "policy": "default"})
    assert r.status_code == 400 and "either a window" in r.json()["detail"]
    assert (
        api_client.post("/v1/drift/baselines", json={"name": "w", "policy": "default", **window}).status_code
        == 201
    )
    r = api_client.post("/v1/drift/baselines", json={"name": "w", "policy": "default", **window})
    assert r.status_code == 409 and "already has a baseline named 'w'" in r.json()["detail"]
    # An empty window could never be compared against: refused when named, not when reported on.
    empty = {"from": window["from"], "to": window["from"]}
    r = api_client.post("/v1/drift/baselines", json={"name": "e", "policy": "default", **empty})
    assert r.status_code == 400 and "'to' must be after 'from'" in r.json()["detail"]

    assert api_client.get("/v1/drift/reports/nope").status_code == 404
    assert api_client.get("/v1/drift/reports", params={"policy": "default"}).json() == {"reports": []}
