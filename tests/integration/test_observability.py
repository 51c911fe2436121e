"""Metrics, logs and traces of real processes: the request id travels API -> Celery -> worker logs, no raw
text reaches any log, both the API and the worker serve Prometheus metrics that count what happened, and
both export OpenTelemetry spans of one generation in one trace to an OTLP/HTTP receiver run here."""

from __future__ import annotations

import gzip
import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from prometheus_client.parser import text_string_to_metric_families

from devstack.redis import free_port
from devstack.stack import Stack, StackError, start_stack

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


class OtlpReceiver:
    """A collector's OTLP/HTTP traces endpoint (POST /v1/traces, protobuf), keeping each span it gets."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                receiver.take(ExportTraceServiceRequest.FromString(body))
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200 if self.path == "/v1/traces" else 404)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="otlp-receiver", daemon=True)
        self.thread.start()

    def take(self, request: ExportTraceServiceRequest) -> None:
        spans = []
        for resource_spans in request.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    spans.append(
                        {
                            "service": resource.get("service.name"),
                            "name": span.name,
                            "trace_id": span.trace_id.hex(),
                            "span_id": span.span_id.hex(),
                            "parent_id": span.parent_span_id.hex(),
                            "attributes": _attributes(span.attributes),
                            "events": [e.name for e in span.events],
                        }
                    )
        with self.lock:
            self.spans.extend(spans)

    def snapshot(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.spans)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _any_value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


def _attributes(pairs: Any) -> dict[str, Any]:
    return {kv.key: _any_value(kv.value) for kv in pairs}


@pytest.fixture(scope="module")
def otlp() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    yield receiver
    receiver.close()


@pytest.fixture(scope="module")
def obs_stack(
    redis_url: str, tmp_path_factory: pytest.TempPathFactory, otlp: OtlpReceiver
) -> Iterator[tuple[Stack, int]]:
    port = free_port()
    env = {
        "ASSAY_METRICS_PORT": str(port),
        "ASSAY_LOG_FORMAT": "json",
        # Traces of the API and the worker to the receiver; exported within 0.2 s of ending.
        "ASSAY_OTEL_ENDPOINT": otlp.url,
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "OTEL_SERVICE_NAME": "",
    }
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


def _canary_job(prefix: str) -> tuple[str, str, dict[str, Any]]:
    """A canary word, a request id and a generation body holding both and some PII."""
    canary = f"zebracorn{uuid.uuid4().hex[:10]}"
    body = {
        "prompt": f"My name is Jane Doe, call me at 212-555-0199. My secret word is {canary}. Say hi.",
        "params": {"temperature": 0, "max_new_tokens": 12},
    }
    return canary, f"{prefix}-{uuid.uuid4().hex}", body


def test_request_id_reaches_worker_logs_metrics_count_and_no_raw_text_is_logged(
    obs_stack: tuple[Stack, int],
) -> None:
    st, worker_port = obs_stack
    canary, rid, body = _canary_job("obs")
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


def test_a_generation_is_one_trace_across_the_api_and_the_worker(
    obs_stack: tuple[Stack, int], otlp: OtlpReceiver
) -> None:
    st, _ = obs_stack
    canary, rid, body = _canary_job("trace")
    with st.client() as c:
        r = c.post("/v1/generations?wait=110", json=body, headers={"X-Request-ID": rid})
    assert r.status_code == 200 and r.json()["status"] == "succeeded", f"{r.text}\n{st.dump_logs()}"
    job_id = r.json()["id"]

    def find(spans: list[dict[str, Any]], service: str, name: str, **attributes: Any) -> list[dict[str, Any]]:
        return [
            s
            for s in spans
            if s["service"] == service and s["name"] == name and attributes.items() <= s["attributes"].items()
        ]

    # Spans leave each process in batches, the task's last: poll, generously.
    deadline = time.monotonic() + 120
    while True:
        spans = otlp.snapshot()
        requests = find(spans, "assay-api", "POST /v1/generations", **{"assay.request_id": rid})
        tasks = find(spans, "assay-worker", "assay.task assay.generate", **{"celery.task_id": job_id})
        if requests and tasks:
            break
        assert time.monotonic() < deadline, f"spans never arrived: {[s['name'] for s in spans]}"
        time.sleep(0.5)

    (request,) = requests
    (task,) = tasks
    trace = [s for s in spans if s["trace_id"] == request["trace_id"]]
    assert task["trace_id"] == request["trace_id"]
    (submit,) = find(trace, "assay-api", "assay.job.submit", **{"assay.job.id": job_id})
    assert submit["parent_id"] == request["span_id"] and task["parent_id"] == submit["span_id"]
    assert request["attributes"]["http.response.status_code"] == 200
    assert request["attributes"]["http.route"] == "/v1/generations"
    assert task["attributes"]["assay.request_id"] == rid
    assert task["attributes"]["assay.job.outcome"] in {"allow", "redact", "warn", "block"}

    (generation,) = find(trace, "assay-worker", "assay.generation")
    assert generation["parent_id"] == task["span_id"]
    assert generation["attributes"]["gen_ai.usage.output_tokens"] >= 1
    assert generation["attributes"]["gen_ai.usage.input_tokens"] >= 1
    assert generation["attributes"]["assay.generation.batch_rows"] >= 1
    batches = find(trace, "assay-worker", "assay.evaluate")
    assert sorted(b["attributes"]["assay.stage"] for b in batches) == ["input", "output"]
    assert all(b["parent_id"] == task["span_id"] for b in batches)
    checks = [s for s in trace if s["name"].startswith("assay.check ")]
    assert checks and {c["parent_id"] for c in checks} <= {b["span_id"] for b in batches}

    # No span of either process, in this trace or any other, carries the prompt's text.
    exported = json.dumps(otlp.snapshot())
    for secret in (canary, "Jane Doe", "212-555-0199"):
        assert secret not in exported
