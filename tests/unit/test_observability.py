"""Request ids in and out, JSON log lines, and the API's /metrics over the real app."""

from __future__ import annotations

import io
import json
import logging
from types import SimpleNamespace
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from evaluators.logs import JsonFormatter, RequestIdFilter, accept_request_id, request_id
from workers.context import _add_request_id, _enter_request


def _samples(text: str) -> list[Any]:
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def test_request_ids_are_echoed_or_made() -> None:
    assert accept_request_id("abc-123_x.y:z") == "abc-123_x.y:z"
    for bad in (None, "", "has space", "x" * 129, "new\nline"):
        made = accept_request_id(bad)
        assert made != bad and len(made) == 32 and made.isalnum()


def test_json_lines_carry_the_request_id_and_nothing_else_of_the_request() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("assay.test.json")
    logger.addHandler(handler)
    logger.propagate = False
    token = request_id.set("rid-1")
    try:
        logger.warning("job %s failed: %s", "j1", "model-missing")
    finally:
        request_id.reset(token)
        logger.removeHandler(handler)
    entry = json.loads(stream.getvalue())
    assert entry["message"] == "job j1 failed: model-missing" and entry["request_id"] == "rid-1"
    assert entry["level"] == "WARNING" and entry["logger"] == "assay.test.json"
    assert entry["ts"].endswith("+00:00")


def test_celery_headers_carry_the_request_id_into_the_task() -> None:
    headers: dict[str, Any] = {}
    token = request_id.set("rid-2")
    try:
        _add_request_id(headers=headers)
    finally:
        request_id.reset(token)
    assert headers == {"request_id": "rid-2"}
    _enter_request(task=SimpleNamespace(request=SimpleNamespace(request_id="rid-2")))
    assert request_id.get() == "rid-2"
    _enter_request(task=SimpleNamespace(request=SimpleNamespace()))  # a task sent outside any request
    assert request_id.get() is None


def test_responses_carry_x_request_id_and_metrics_scrape(api_client: Any) -> None:
    r = api_client.post("/v1/moderate", json={"text": "hello there"}, headers={"X-Request-ID": "obs-unit-1"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "obs-unit-1"
    made = api_client.get("/v1/jobs/none").headers["x-request-id"]  # a 404 too, with a fresh id
    assert len(made) == 32
    assert api_client.get("/no/such/route").headers["x-request-id"]
    metrics = api_client.get("/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    samples = _samples(metrics.text)
    routes = {
        s.labels["path"]
        for s in samples
        if s.name == "assay_http_request_duration_seconds_count" and s.value >= 1
    }
    assert {"/v1/moderate", "/v1/jobs/{job_id}"} <= routes
    checks = {
        (s.labels["policy"], s.labels["stage"], s.labels["check"])
        for s in samples
        if s.name == "assay_check_duration_seconds_count" and s.value >= 1
    }
    assert ("default", "output", "pii") in checks and ("default", "output", "toxicity") in checks
    batch_counts = [s for s in samples if s.name == "assay_check_batch_size_count"]
    assert sum(s.value for s in batch_counts if s.labels["policy"] == "default") >= 1
    drift = {s.labels["outcome"] for s in samples if s.name == "assay_drift_events_total"}
    assert drift == {"recorded", "acknowledged", "dropped", "failed", "unembedded"}
    loads = [s for s in samples if s.name == "assay_model_load_seconds"]
    assert loads and all(s.value >= 0 for s in loads)
    depth = {s.labels["queue"] for s in samples if s.name == "assay_queue_depth"}
    assert depth  # the configured queues, measured at scrape time
    statuses = {s.labels["status"] for s in samples if s.name == "assay_jobs"}
    assert statuses == {"queued", "running", "succeeded", "failed", "cancelled"}
