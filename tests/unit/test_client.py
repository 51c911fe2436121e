"""The client's retry and error rules, over httpx's MockTransport (the real stack: tests/integration)."""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path

import httpx
import pytest

from assay.client import AsyncClient, Client, Retry
from assay.errors import (
    AssayConnectionError,
    BadRequest,
    NotFound,
    RateLimited,
    ServerError,
    ServiceUnavailable,
)

ROOT = Path(__file__).resolve().parents[2]
FAST = Retry(attempts=3, backoff_s=0.001, max_backoff_s=0.01)
POLICIES = {"policies": [{"name": "default", "version": "1", "sha256": "a" * 64, "input": ["pii"]}]}


def scripted(*answers: httpx.Response | Exception) -> tuple[list[httpx.Request], httpx.MockTransport]:
    """A transport that answers in order and fails loudly when asked more often than scripted."""
    seen: list[httpx.Request] = []
    queue = list(answers)

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if not queue:
            raise AssertionError(f"unexpected request #{len(seen)}: {request.method} {request.url}")
        answer = queue.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return seen, httpx.MockTransport(handle)


def problem(status: int, code: str, **headers: str) -> httpx.Response:
    body = {
        "type": f"https://assay.dev/problems/{code}",
        "title": code,
        "status": status,
        "detail": f"{code}!",
    }
    return httpx.Response(status, json=body, headers={"content-type": "application/problem+json", **headers})


def test_429_and_503_are_retried_with_retry_after() -> None:
    seen, transport = scripted(
        problem(503, "overloaded", **{"retry-after": "0"}),
        problem(429, "rate-limited"),
        httpx.Response(200, json=POLICIES),
    )
    with Client("http://assay.test", retry=FAST, transport=transport) as assay:
        (policy,) = assay.policies()
    assert policy.name == "default" and policy.input == ["pii"]
    assert len(seen) == 3


def test_retries_end_with_the_typed_error() -> None:
    seen, transport = scripted(*[problem(503, "overloaded") for _ in range(4)])
    with (
        Client("http://assay.test", retry=FAST, transport=transport) as assay,
        pytest.raises(ServiceUnavailable) as exc,
    ):
        assay.policies()
    assert len(seen) == 4  # the first try and three retries
    assert exc.value.status == 503 and exc.value.code == "overloaded" and exc.value.detail == "overloaded!"


@pytest.mark.parametrize(
    ("status", "code", "error"),
    [
        (400, "invalid-input", BadRequest),
        (404, "job-not-found", NotFound),
        (500, "internal-error", ServerError),
    ],
)
def test_other_errors_are_raised_at_once_as_their_type(
    status: int, code: str, error: type[Exception]
) -> None:
    seen, transport = scripted(problem(status, code))
    with Client("http://assay.test", retry=FAST, transport=transport) as assay, pytest.raises(error) as exc:
        assay.job("x")
    assert len(seen) == 1
    assert exc.value.code == code  # type: ignore[attr-defined]


def test_a_refused_connection_is_retried_then_reported() -> None:
    refused = httpx.ConnectError("refused")
    seen, transport = scripted(refused, refused, refused, refused)
    with (
        Client("http://assay.test", retry=FAST, transport=transport) as assay,
        pytest.raises(AssayConnectionError),
    ):
        assay.policies()
    assert len(seen) == 4


def test_a_request_that_was_sent_is_not_repeated() -> None:
    seen, transport = scripted(httpx.ReadTimeout("slow"))
    with (
        Client("http://assay.test", retry=FAST, transport=transport) as assay,
        pytest.raises(AssayConnectionError),
    ):
        assay.generate("hi", wait=5)
    assert len(seen) == 1
    assert seen[0].url.params["wait"] == "5"


def test_async_client_retries_too() -> None:
    seen, transport = scripted(problem(429, "rate-limited"), httpx.Response(200, json=POLICIES))

    async def run() -> str:
        async with AsyncClient("http://assay.test", retry=FAST, transport=transport) as assay:
            return (await assay.policies())[0].name

    assert asyncio.run(run()) == "default"
    assert len(seen) == 2


def test_requests_are_checked_before_they_are_sent() -> None:
    _, transport = scripted()  # any request would fail the test
    with Client("http://assay.test", transport=transport) as assay:
        with pytest.raises(ValueError, match="exactly one of prompt or messages"):
            assay.generate()
        with pytest.raises(ValueError, match="suite"):
            assay.start_audit({"policy": "default"})


def test_the_client_imports_only_the_contracts_of_assay() -> None:
    for path in sorted((ROOT / "assay").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        modules |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        inside = {m for m in modules if m.split(".")[0] in {"service", "workers", "store", "evaluators"}}
        assert inside <= {"evaluators.contracts", "evaluators.findings"}, (path.name, inside)


def test_no_retries_when_told_so() -> None:
    seen, transport = scripted(problem(429, "rate-limited"))
    with Client("http://assay.test", retry=Retry(attempts=0), transport=transport) as assay:
        with pytest.raises(RateLimited):
            assay.moderate("hi")
    assert len(seen) == 1 and seen[0].url.path == "/v1/moderate"


def test_the_api_key_is_sent_as_a_bearer_token_and_401_403_504_are_typed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from assay.errors import Forbidden, GatewayTimeout, Unauthorized

    seen, transport = scripted(
        httpx.Response(200, json=POLICIES),
        problem(401, "unauthenticated", **{"www-authenticate": "Bearer"}),
        problem(403, "forbidden"),
        problem(504, "timeout"),
        httpx.Response(200, json=POLICIES),
    )
    with Client("http://assay.test", retry=FAST, transport=transport, api_key="assay_k") as assay:
        assay.policies()
        for cls in (Unauthorized, Forbidden, GatewayTimeout):
            with pytest.raises(cls):
                assay.policies()
    assert all(r.headers["authorization"] == "Bearer assay_k" for r in seen[:4])
    assert len(seen) == 4  # 401, 403 and 504 are not retried
    monkeypatch.setenv("ASSAY_API_KEY", "assay_env")
    with Client("http://assay.test", retry=FAST, transport=transport) as assay:
        assay.policies()
    assert seen[-1].headers["authorization"] == "Bearer assay_env"
