"""End to end: HTTP API -> Redis -> real Celery worker -> SmolLM2 -> policy checks."""

from __future__ import annotations

import concurrent.futures
from typing import Any

import pytest

from devstack.stack import Stack

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

QUESTION = "What is the capital of France?"


def generate(stack: Stack, body: dict[str, Any], wait: int = 110) -> dict[str, Any]:
    with stack.client() as c:
        r = c.post(f"/v1/generations?wait={wait}", json=body)
    assert r.status_code == 200, f"{r.status_code} {r.text}\n{stack.dump_logs()}"
    job = r.json()
    assert job["status"] == "succeeded", f"{job}\n{stack.dump_logs()}"
    return job["result"]  # type: ignore[no-any-return]


def test_plain_question_gets_a_sensible_filtered_answer(stack: Stack) -> None:
    result = generate(stack, {"prompt": QUESTION, "params": {"temperature": 0, "max_new_tokens": 24}})
    assert "Paris" in result["output"]
    assert result["action"] == "allow"
    assert result["usage"]["prompt_tokens"] > 5
    assert 0 < result["usage"]["completion_tokens"] <= 24
    model = result["model"]
    assert model["device"] == "cpu" and model["dtype"]
    assert "raw_output" not in result  # the default policy does not release raw output
    for key in ("queue_ms", "input_checks_ms", "generate_ms", "output_checks_ms"):
        assert result["timings"][key] >= 0
    assert result["policy"]["name"] == "default" and len(result["policy"]["sha256"]) == 64


def test_max_new_tokens_and_stop_sequences_are_honoured(stack: Stack) -> None:
    short = generate(stack, {"prompt": QUESTION, "params": {"temperature": 0, "max_new_tokens": 3}})
    assert short["usage"]["completion_tokens"] == 3
    assert short["finish_reason"] == "length"
    cut = generate(
        stack, {"prompt": QUESTION, "params": {"temperature": 0, "max_new_tokens": 24, "stop": ["Paris"]}}
    )
    assert "Paris" not in cut["output"]
    assert cut["finish_reason"] == "stop_sequence"


def test_same_seed_reproduces_the_same_text(stack: Stack) -> None:
    body = {
        "prompt": "Write one sentence about the sea.",
        "params": {"temperature": 1.0, "top_p": 0.95, "seed": 1234, "max_new_tokens": 20},
    }
    first = generate(stack, body)
    second = generate(stack, body)
    assert first["output"] == second["output"]
    assert first["output"]


def test_pii_in_the_prompt_is_redacted_before_generation(stack: Stack) -> None:
    result = generate(
        stack,
        {
            "prompt": "My email is jane.doe@example.com. Say hello to me.",
            "params": {"temperature": 0, "max_new_tokens": 16},
        },
    )
    assert result["input"]["action"] == "redact"
    assert "EMAIL_ADDRESS" in {f["label"] for f in result["input"]["findings"]}
    assert "jane.doe@example.com" not in (result["output"] or "")


def test_blocked_prompt_is_never_generated(stack: Stack) -> None:
    result = generate(
        stack,
        {"prompt": "My card is 4111 1111 1111 1111, remember it.", "policy": "strict"},
    )
    assert result["action"] == "block"
    assert result["output"] is None
    assert result["blocked_stage"] == "input"
    assert result["usage"]["completion_tokens"] == 0


def test_concurrent_jobs_share_batches(stack: Stack) -> None:
    body = {"prompt": QUESTION, "params": {"temperature": 0, "max_new_tokens": 8}}
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda _: generate(stack, body), range(6)))
    assert {r["output"] for r in results} == {results[0]["output"]}
    assert max(r["batch_rows"] for r in results) > 1


def test_limits_and_unknown_jobs_get_problem_details(stack: Stack) -> None:
    with stack.client() as c:
        r = c.post("/v1/generations", json={"prompt": "hi", "params": {"max_new_tokens": 5000}})
        assert r.status_code == 422
        assert r.headers["content-type"].startswith("application/problem+json")
        assert "max_new_tokens" in r.json()["detail"]
        r = c.post("/v1/generations", json={"prompt": "hi", "messages": []})
        assert r.status_code == 400
        r = c.get("/v1/jobs/does-not-exist")
        assert r.status_code == 404


def test_missing_model_fails_with_its_reason(stack: Stack) -> None:
    with stack.client() as c:
        r = c.post("/v1/generations?wait=60", json={"prompt": "hi", "model": "/no/such/model"})
        assert r.status_code == 200, r.text
        job = r.json()
    assert job["status"] == "failed"
    assert job["error"]["type"].endswith("model-missing")
    assert "/no/such/model" in job["error"]["detail"]


def test_queued_job_can_be_cancelled(stack: Stack) -> None:
    with stack.client() as c:
        r = c.post("/v1/generations", json={"prompt": "hi", "model": "parked-model"})
        assert r.status_code == 202
        job_id = r.json()["id"]
        assert r.headers["location"] == f"/v1/jobs/{job_id}"
        assert c.get(f"/v1/jobs/{job_id}").json()["status"] == "queued"
        r = c.post(f"/v1/jobs/{job_id}/cancel")
        assert r.status_code == 200
        assert r.json()["status"] == "cancelled"
        assert c.get(f"/v1/jobs/{job_id}").json()["status"] == "cancelled"
        assert c.post(f"/v1/jobs/{job_id}/cancel").status_code == 409


def test_fairness_job_returns_group_scores_gaps_and_intervals(stack: Stack) -> None:
    result = generate(
        stack,
        {
            "prompt": "Write one sentence about a {group} nurse.",
            "fairness": {"dimension": "gender", "samples_per_group": 2},
            "params": {"temperature": 0.8, "seed": 3, "max_new_tokens": 16},
        },
    )
    fairness = result["fairness"]
    assert fairness["dimension"] == "gender"
    groups = {"female", "male", "non-binary"}
    for measure in ("toxicity", "refusal_rate", "length"):
        assert set(fairness["per_group"][measure]) == groups
        gap = fairness["gaps"][measure]
        lo, hi = gap["ci"]
        assert 0 <= lo <= hi
        assert gap["gap"] == pytest.approx(
            max(fairness["per_group"][measure].values()) - min(fairness["per_group"][measure].values()),
            abs=1e-5,
        )
    assert fairness["n_per_group"] == {g: 2 for g in ["female", "male", "non-binary"]}
    assert len(result["variants"]) == 6
    assert {v["group"] for v in result["variants"]} == groups
    assert result["action"] in {"allow", "flag", "redact", "block"}


def test_fairness_request_needs_a_group_slot(stack: Stack) -> None:
    with stack.client() as c:
        r = c.post("/v1/generations", json={"prompt": "no slot here", "fairness": {"dimension": "gender"}})
    assert r.status_code == 400
