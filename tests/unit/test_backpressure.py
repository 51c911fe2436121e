"""Backpressure: a deep queue is a 503 with Retry-After, a slow request a 504, a tenant over quota a 429."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar import Controller, Litestar, get
from litestar.response import Stream
from litestar.testing import TestClient

from evaluators.contracts import SamplingParams
from evaluators.errors import Overloaded, RateLimited
from service.auth import Principal
from service.backpressure import QueueGuard, request_timeout
from service.jobs import check_quota
from service.openai.errors import OPENAI_EXCEPTION_HANDLERS
from service.problems import EXCEPTION_HANDLERS
from store.jobs import JobStore, job_store
from workers.settings import WorkerSettings


class Depths:
    def __init__(self) -> None:
        self.depths = {"cpu": 0}
        self.calls = 0

    def __call__(self, settings: WorkerSettings) -> dict[str, int]:
        self.calls += 1
        return dict(self.depths)


def test_queue_guard_refuses_a_deep_queue_with_retry_after() -> None:
    depths = Depths()
    guard = QueueGuard(WorkerSettings(), max_depth=3, ttl_s=0, measure=depths)
    guard.check("cpu")
    depths.depths["cpu"] = 3
    with pytest.raises(Overloaded) as err:
        guard.check("cpu")
    assert err.value.extra["retry_after_s"] >= 1 and err.value.extra["depth"] == 3
    guard.check("gpu")  # another queue is not full
    QueueGuard(WorkerSettings(), max_depth=0, measure=depths).check("cpu")  # 0: never refuses


def test_queue_depth_is_read_at_most_once_per_ttl() -> None:
    depths = Depths()
    guard = QueueGuard(WorkerSettings(), max_depth=3, ttl_s=60, measure=depths)
    for _ in range(5):
        guard.check("cpu")
    assert depths.calls == 1


def test_a_broker_that_does_not_answer_is_not_this_guards_call() -> None:
    def down(settings: WorkerSettings) -> dict[str, int]:
        raise ConnectionError("refused")

    QueueGuard(WorkerSettings(), max_depth=1, ttl_s=0, measure=down).check("cpu")


@get("/slow", opt={"public": True})
async def slow() -> dict[str, str]:
    await asyncio.sleep(5)
    return {"done": "late"}


@get("/stream", opt={"public": True})
async def stream() -> Stream:
    async def chunks() -> AsyncIterator[str]:
        for i in range(3):
            yield f"{i}\n"
            await asyncio.sleep(0.2)

    return Stream(chunks(), media_type="text/plain")


class OpenAIish(Controller):
    path = "/v1"
    exception_handlers = OPENAI_EXCEPTION_HANDLERS

    @get("/models", opt={"public": True})
    async def models(self) -> dict[str, str]:
        await asyncio.sleep(5)
        return {}


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient[Litestar]]:
    app = Litestar(
        [slow, stream, OpenAIish], middleware=[request_timeout(0.3)], exception_handlers=EXCEPTION_HANDLERS
    )
    with TestClient(app) as c:
        yield c


def test_a_request_with_no_answer_in_time_is_a_504_problem(client: TestClient[Any]) -> None:
    r = client.get("/slow")
    assert r.status_code == 504
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["type"].endswith("/timeout") and "0.3 s" in r.json()["detail"]
    assert "x-request-id" not in r.headers or r.headers["x-request-id"]


def test_openai_routes_time_out_in_openai_shape(client: TestClient[Any]) -> None:
    r = client.get("/v1/models")
    assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"


def test_a_stream_that_started_is_not_cut(client: TestClient[Any]) -> None:
    r = client.get("/stream")  # 0.6 s in all, above the 0.3 s limit
    assert r.status_code == 200 and r.text == "0\n1\n2\n"


def test_a_tenant_over_its_job_quota_gets_429(tmp_path: Path) -> None:
    from store.db import reset_stores

    class App:
        def __init__(self, store: JobStore) -> None:
            self.store = store

        def jobs(self) -> JobStore:
            return self.store

    store = job_store(f"sqlite:///{tmp_path}/assay.db")
    try:
        common = {"model": "m", "queue": "q", "policy_name": "p", "policy_sha256": "a" * 64,
                  "prompt_sha256": "b" * 64, "params": SamplingParams(temperature=0)}  # fmt: skip
        for i in range(2):
            store.create(job_id=f"acme-{i}", tenant="acme", **common)  # type: ignore[arg-type]
        store.create(job_id="globex-0", tenant="globex", **common)  # type: ignore[arg-type]
        principal = Principal(tenant="acme", role="app", max_active_jobs=2)
        with pytest.raises(RateLimited) as err:
            check_quota(App(store), principal)  # type: ignore[arg-type]
        assert err.value.extra["quota"] == "max_active_jobs" and err.value.extra["retry_after_s"] >= 1
        store.cancel("acme-0")  # a finished job no longer counts
        check_quota(App(store), principal)  # type: ignore[arg-type]
        check_quota(App(store), Principal(tenant="acme", role="app", max_active_jobs=0))  # type: ignore[arg-type]
        assert store.get("globex-0", tenant="acme") is None and store.get("globex-0", tenant="globex")
    finally:
        reset_stores()
