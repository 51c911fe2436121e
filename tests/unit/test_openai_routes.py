"""The OpenAI routes in process (real app, real check models): errors in OpenAI's shape, models, moderations.

Requests that would queue a job are end-to-end tests (tests/integration/test_openai_sdk.py);
these stop before any job is recorded.
"""

from __future__ import annotations

from typing import Any

import pytest

CHAT = {"model": "smollm2", "messages": [{"role": "user", "content": "hi"}]}


def _openai_error(r: Any, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "param", "code"),
    [
        (
            "/v1/chat/completions",
            {**CHAT, "tools": [{"type": "function"}]},
            {},
            400,
            "tools",
            "unsupported_parameter",
        ),
        ("/v1/chat/completions", {**CHAT, "logprobs": True}, {}, 400, "logprobs", "unsupported_parameter"),
        (
            "/v1/completions",
            {"model": "smollm2", "prompt": "x", "echo": True},
            {},
            400,
            "echo",
            "unsupported_parameter",
        ),
        ("/v1/chat/completions", {**CHAT, "model": "gpt-4o"}, {}, 404, "model", "model_not_found"),
        ("/v1/chat/completions", {**CHAT, "model": "smollm2@nope"}, {}, 404, None, "policy-not-found"),
        (
            "/v1/chat/completions",
            {**CHAT, "model": "smollm2@strict"},
            {"X-Assay-Policy": "default"},
            400,
            "model",
            "invalid-input",
        ),
        ("/v1/chat/completions", {**CHAT, "max_tokens": 5000}, {}, 400, None, "limit-exceeded"),
        ("/v1/chat/completions", {**CHAT, "temperature": 3}, {}, 400, "temperature", "invalid_value"),
        ("/v1/chat/completions", {"model": "smollm2"}, {}, 400, "messages", "invalid_value"),
        ("/v1/completions", {"model": "smollm2", "prompt": "x" * 20_001}, {}, 413, None, "payload-too-large"),
        ("/v1/moderations", {"input": "hi", "model": "x@nope"}, {}, 404, None, "policy-not-found"),
    ],
)
def test_bad_requests_get_openai_errors(
    api_client: Any, path: str, body: Any, headers: dict[str, str], status: int, param: str | None, code: str
) -> None:
    error = _openai_error(api_client.post(path, json=body, headers=headers), status)
    assert error["param"] == param
    assert error["code"] == code
    assert error["type"] == "invalid_request_error"


def test_malformed_json_is_an_openai_400(api_client: Any) -> None:
    r = api_client.post(
        "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    _openai_error(r, 400)


def test_other_routes_keep_problem_details(api_client: Any) -> None:
    r = api_client.post("/v1/moderate", json={"text": "hi", "policy": "nope"})
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["type"].endswith("policy-not-found")


def test_models_list_every_served_model_with_each_policy(api_client: Any) -> None:
    body = api_client.get("/v1/models").json()
    assert body["object"] == "list"
    ids = {m["id"]: m for m in body["data"]}
    assert "smollm2" in ids and ids["smollm2"]["policy"] is None
    assert ids["smollm2@strict"]["policy"] == "strict"
    assert {"default", "strict"} <= set(ids["smollm2"]["policies"])
    assert all(m["object"] == "model" and m["owned_by"] == "assay" for m in body["data"])


def test_moderations_map_a_threat_to_openai_categories(api_client: Any) -> None:
    r = api_client.post(
        "/v1/moderations", json={"input": ["You are a stupid idiot and I will kill you", "Have a nice day."]}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    threat, kind = body["results"]
    assert threat["flagged"] and threat["categories"]["violence"]
    assert threat["category_scores"]["violence"] > 0.5
    assert threat["assay"]["action"] == "block"
    assert not kind["flagged"] and not any(kind["categories"].values())
    assert body["assay"]["policy"]["name"] == "default" and body["assay"]["stage"] == "input"


def test_moderations_policy_from_the_header_and_stage(api_client: Any) -> None:
    r = api_client.post(
        "/v1/moderations",
        json={"input": "Mail me at jane.doe@example.com"},
        headers={"X-Assay-Policy": "strict", "X-Assay-Stage": "output"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    # strict blocks an e-mail address in an output: flagged, though no OpenAI category applies.
    (result,) = body["results"]
    assert result["assay"]["action"] == "block" and result["flagged"]
    assert not any(result["categories"].values())
    assert body["assay"]["policy"]["name"] == "strict" and body["model"] == "assay@strict"
    bad = api_client.post("/v1/moderations", json={"input": "x"}, headers={"X-Assay-Stage": "middle"})
    assert _openai_error(bad, 400)["param"] == "X-Assay-Stage"


def test_overload_in_openai_shape_says_when_to_retry() -> None:
    # The handler ignores the request: it maps the error alone.
    from evaluators.errors import Overloaded
    from service.openai.errors import assay_error

    response = assay_error(None, Overloaded("the queue is full", retry_after_s=7))  # type: ignore[arg-type]
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "7"
    assert response.content["error"]["type"] != "invalid_request_error"
