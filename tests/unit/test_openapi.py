"""The served OpenAPI document says what the server does (service/openapi.py)."""

from __future__ import annotations

from typing import Any

import pytest

from service.openapi import documented_errors
from service.problems import STATUS


@pytest.fixture(scope="module")
def doc(api_client: Any) -> dict[str, Any]:
    return api_client.get("/docs/openapi.json").json()  # type: ignore[no-any-return]


def _operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(m, p, op) for p, item in doc["paths"].items() for m, op in item.items() if "responses" in op]


def test_every_operation_documents_every_error_status(doc: dict[str, Any]) -> None:
    statuses = {str(s) for s in documented_errors()}
    assert {"400", "404", "405", "413", "422", "503"} <= statuses
    assert {str(status) for _, status in STATUS} <= statuses  # a new error class is documented too
    for method, path, op in _operations(doc):
        assert statuses <= set(op["responses"]), (method, path)
        media = "application/json" if "openai" in op.get("tags", ()) else "application/problem+json"
        assert media in op["responses"]["400"]["content"], (method, path)
        assert "Retry-After" in op["responses"]["503"]["headers"], (method, path)
        assert "Allow" in op["responses"]["405"]["headers"], (method, path)


def test_request_bodies_refuse_unknown_keys_where_the_server_does(doc: dict[str, Any]) -> None:
    schemas = doc["components"]["schemas"]
    for name in ("ModerateRequest", "GenerationRequest", "AuditRequest", "DriftReportRequest", "Suite"):
        assert schemas[name]["additionalProperties"] is False, name
    # OpenAI requests take unknown fields at neutral values only (a 400 names any other).
    assert schemas["ChatRequest"]["additionalProperties"] == {"enum": [None, []]}


def test_generation_needs_exactly_one_of_prompt_or_messages(doc: dict[str, Any], api_client: Any) -> None:
    import jsonschema

    # The component with the document's components beside it, so its $refs resolve.
    schema = {**doc["components"]["schemas"]["GenerationRequest"], "components": doc["components"]}
    validator = jsonschema.Draft202012Validator(schema)
    for body, ok in [
        ({}, False),
        ({"prompt": "hi"}, True),
        ({"messages": [{"role": "user", "content": "hi"}]}, True),
        ({"prompt": "hi", "messages": [{"role": "user", "content": "hi"}]}, False),
        ({"messages": [{"role": "system", "content": "hi"}]}, False),
        ({"prompt": "hi", "fairness": {"dimension": "gender"}}, False),
        ({"prompt": "{group} is", "fairness": {"dimension": "gender"}}, True),
        ({"prompt": "hi", "params": {"temperature": 9}}, False),  # the default policy's limit
        ({"prompt": "hi", "policy": "strict", "params": {"temperature": 1.5}}, False),
        ({"prompt": "hi", "params": {"temperature": 1.5}}, True),
    ]:
        assert validator.is_valid(body) is ok, body
        # The server agrees (202: queued; no worker runs in this test).
        status = api_client.post("/v1/generations", json=body).status_code
        assert (status == 202) is ok, (body, status)


def test_a_405_says_which_methods_the_path_has(api_client: Any) -> None:
    r = api_client.patch("/v1/jobs/x")
    assert r.status_code == 405 and r.headers["content-type"].startswith("application/problem+json")
    assert set(r.headers["allow"].replace(" ", "").split(",")) == {"GET", "OPTIONS"}
    r = api_client.options("/v1/drift/baselines")
    assert set(r.headers["allow"].replace(" ", "").split(",")) == {"GET", "POST", "OPTIONS"}


def test_numbers_are_not_coerced_from_booleans_or_strings(api_client: Any) -> None:
    for params in ({"top_k": True}, {"top_k": "5"}, {"temperature": True}, {"max_new_tokens": 2.5}):
        r = api_client.post("/v1/generations", json={"prompt": "hi", "params": params})
        assert r.status_code == 400, (params, r.text)
    assert (
        api_client.post("/v1/generations", json={"prompt": "hi", "params": {"top_k": 5.0}}).status_code == 202
    )
