"""Metrics and logs of real processes: the request id travels API -> Celery -> worker logs, no raw text
reaches any log, and both the API and the worker serve Prometheus metrics that count what happened."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from devstack.redis import free_port
from devstack.stack import Stack, StackError, start_stack

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def obs_stack(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, int]]:
    port = free_port()
    env = {"ASSAY_METRICS_PORT": str(port), "ASSAY_LOG_FORMAT": "json"}
    try:
        st = start_stack(redis_url, tmp_path_factory.mktemp("assay-obs"), workers=1, extra_env=env)
    except StackError as exc:
        pytest.fail(str(exc))
    yield st, port
    st.close()


def _samples(text: str) -> list[Any]:
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def _value(samples: list[Any], name: str, **labels: str) -> float:
    return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())


def _records(log: Path) -> list[dict[str, Any]]:
    # Celery's start-up banner is printed, not logged; every logged line is one JSON object.
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.startswith("{")]
    return [json.loads(line) for line in lines]


def test_request_id_reaches_worker_logs_metrics_count_and_no_raw_text_is_logged(
    obs_stack: tuple[Stack, int],
) -> None:
    st, worker_port = obs_stack
    canary = f"zebracorn{uuid.uuid4().hex[:10]}"
    rid = f"obs-{uuid.uuid4().hex}"
    body = {
        "prompt": f"My name is Jane Doe, call me at 212-555-0199. My secret word is {canary}. Say hi.",
        "params": {"temperature": 0, "max_new_tokens": 12},
    }
    with st.client() as c:
        r = c.post("/v1/generations?wait=110", json=body, headers={"X-Request-ID": rid})
        assert r.status_code == 200 and r.json()["status"] == "succeeded", f"{r.text}\n{st.dump_logs()}"
        assert r.headers["x-request-id"] == rid
        job_id = r.json()["id"]
        api_metrics = _samples(c.get("/metrics").text)
    worker_metrics = _samples(httpx.get(f"http://127.0.0.1:{worker_port}/metrics", timeout=10).text)

    data = Path(st.env["ASSAY_DATA_DIR"])
    api_log, worker_log = data / "api.log", data / "worker-w1.log"
    api_lines = [e for e in _records(api_log) if e["request_id"] == rid]
    worker_lines = [e for e in _records(worker_log) if e["request_id"] == rid]
    assert any(e["message"].startswith("POST /v1/generations 200") for e in api_lines), api_lines
    assert any(e["message"].startswith(f"job {job_id} finished") for e in worker_lines), worker_lines
    for log in (api_log, worker_log):
        text = log.read_text(errors="replace")
        assert canary not in text and "212-555-0199" not in text and "Jane Doe" not in text

    assert _value(api_metrics, "assay_http_request_duration_seconds_count", path="/v1/generations") >= 1
    assert _value(api_metrics, "assay_jobs", status="succeeded") >= 1
    assert _value(api_metrics, "assay_queue_depth", queue=st.queue) == 0
    assert _value(worker_metrics, "assay_jobs_finished_total", status="succeeded") >= 1
    assert _value(worker_metrics, "assay_job_duration_seconds_count") >= 1
    assert _value(worker_metrics, "assay_generation_batch_rows_count") >= 1
    for stage in ("input", "output"):
        labels = {"policy": "default", "stage": stage}
        assert _value(worker_metrics, "assay_check_duration_seconds_count", **labels) >= 1
        assert _value(worker_metrics, "assay_check_batch_size_count", **labels) >= 1
    loaded = {s.labels["model"] for s in worker_metrics if s.name == "assay_model_load_seconds"}
    assert any(key.startswith("engine:default") for key in loaded), loaded
