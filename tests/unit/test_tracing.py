"""OpenTelemetry traces, recorded by the SDK's in-memory exporter: span names and attributes over the
real app, the trace context from a job's submission into its Celery task, no span carrying the
request's text, and Assay without the ``otel`` extra (off, or a start-up error naming it)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery
from celery.signals import before_task_publish
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from evaluators.errors import ConfigError
from workers import tracing
from workers.settings import TracingSettings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Traces on for one test, into memory; off again afterwards."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_provider(provider)
    try:
        yield exporter
    finally:
        tracing.use_provider(None)
        provider.shutdown()


def _texts(spans: Sequence[ReadableSpan]) -> list[str]:
    """Everything a span exports as text: names, attribute values, events, links, status."""
    out: list[str] = []
    for s in spans:
        out += [s.name, str(s.status.description or "")]
        out += [str(v) for v in (s.attributes or {}).values()]
        for event in s.events:
            out += [event.name, *(str(v) for v in (event.attributes or {}).values())]
        for link in s.links:
            out += [str(v) for v in (link.attributes or {}).values()]
    return out


def _assert_no_text(spans: Sequence[ReadableSpan], *secrets: str) -> None:
    exported = "\n".join(_texts(spans))
    for secret in secrets:
        assert secret not in exported


def _one(spans: Sequence[ReadableSpan], name: str) -> ReadableSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, [s.name for s in spans]
    return found[0]


def _child_of(child: ReadableSpan, parent: ReadableSpan) -> bool:
    assert child.parent is not None and child.context is not None and parent.context is not None
    return (
        child.parent.span_id == parent.context.span_id and child.context.trace_id == parent.context.trace_id
    )


def test_a_moderation_is_a_request_span_over_its_batch_and_each_check(
    api_client: Any, spans: InMemorySpanExporter
) -> None:
    canary = f"zebracorn{uuid.uuid4().hex[:10]}"
    text = f"My name is Jane Doe, call me at 212-555-0199. My secret word is {canary}."
    body = {"text": text, "stage": "input"}
    r = api_client.post("/v1/moderate", json=body, headers={"X-Request-ID": "trace-unit-1"})
    assert r.status_code == 200
    finished = spans.get_finished_spans()

    http = _one(finished, "POST /v1/moderate")
    assert http.kind is SpanKind.SERVER
    assert dict(http.attributes or {}) == {
        "http.request.method": "POST",
        "http.route": "/v1/moderate",
        "http.response.status_code": 200,
        "assay.request_id": "trace-unit-1",
        "assay.tenant": "default",
    }
    batch = _one(finished, "assay.evaluate")
    assert _child_of(batch, http)
    assert dict(batch.attributes or {}) == {
        "assay.policy": "default",
        "assay.stage": "input",
        "assay.batch.size": 1,
    }
    checks = [s for s in finished if s.name.startswith("assay.check ")]
    expected = api_client.app.state.assay.engines["default"].checks("input")
    assert sorted(str((s.attributes or {})["assay.check"]) for s in checks) == sorted(expected)
    for check in checks:
        assert _child_of(check, batch)
        assert {"assay.policy": "default", "assay.stage": "input", "assay.batch.size": 1}.items() <= dict(
            check.attributes or {}
        ).items()
    _assert_no_text(finished, canary, "Jane Doe", "212-555-0199")


def test_a_job_carries_its_trace_into_the_worker_task(
    api_client: Any, spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A broker in memory: the message is published (signals and all) and goes nowhere.
    monkeypatch.setattr(
        api_client.app.state.assay, "celery", lambda: Celery("trace-test", broker="memory://")
    )
    tracing.install_task_tracing()
    sent: list[dict[str, Any]] = []

    def record(headers: dict[str, Any] | None = None, **_: Any) -> None:
        sent.append(dict(headers or {}))

    before_task_publish.connect(record, weak=False, dispatch_uid="test-tracing-record")
    canary = f"zebracorn{uuid.uuid4().hex[:10]}"
    try:
        r = api_client.post(
            "/v1/generations",
            json={"prompt": f"Say hi to {canary}.", "params": {"max_new_tokens": 4}},
            headers={"X-Request-ID": "trace-unit-2"},
        )
    finally:
        before_task_publish.disconnect(dispatch_uid="test-tracing-record")
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    http = _one(spans.get_finished_spans(), "POST /v1/generations")
    submit = _one(spans.get_finished_spans(), "assay.job.submit")
    assert _child_of(submit, http) and submit.kind is SpanKind.PRODUCER
    attributes = dict(submit.attributes or {})
    assert attributes["assay.job.id"] == job_id and attributes["assay.policy"] == "default"
    assert {"assay.model", "assay.queue", "assay.tenant"} <= attributes.keys()

    # The message's headers name the submission's span, as W3C trace context.
    assert len(sent) == 1
    assert submit.context is not None
    traceparent = sent[0]["traceparent"]
    assert traceparent.split("-")[1:3] == [
        f"{submit.context.trace_id:032x}",
        f"{submit.context.span_id:016x}",
    ]

    # In the worker: the task's span continues that trace, and the work done in it nests under it.
    request = SimpleNamespace(
        traceparent=traceparent, request_id="trace-unit-2", retries=0, delivery_info={"routing_key": "cpu"}
    )
    task = SimpleNamespace(name="assay.generate", request=request)
    tracing._task_started(task_id=job_id, task=task)
    with (
        tracing.checks_span("default", "output", 1),
        tracing.span("assay.generation", {"gen_ai.usage.output_tokens": 4}),
    ):
        pass
    tracing.annotate({"assay.job.id": job_id, "assay.job.outcome": "allow"})
    tracing._task_finished(task_id=job_id, task=task, state="SUCCESS")
    assert tracing.current_span_context() is None  # the task's context was left behind it

    finished = spans.get_finished_spans()
    run = _one(finished, "assay.task assay.generate")
    assert run.kind is SpanKind.CONSUMER and _child_of(run, submit)
    assert {
        "celery.task_id": job_id,
        "assay.request_id": "trace-unit-2",
        "messaging.destination.name": "cpu",
        "assay.job.outcome": "allow",
        "celery.state": "SUCCESS",
    }.items() <= dict(run.attributes or {}).items()
    assert _child_of(_one(finished, "assay.evaluate"), run)
    _assert_no_text(finished, canary)


def test_a_failure_is_recorded_by_its_type_never_its_message(spans: InMemorySpanExporter) -> None:
    canary = f"zebracorn{uuid.uuid4().hex[:10]}"
    with pytest.raises(ValueError, match=canary), tracing.span("assay.job.submit"):
        raise ValueError(f"could not parse {canary}")
    (failed,) = spans.get_finished_spans()
    assert failed.status.status_code is StatusCode.ERROR and failed.status.description == "ValueError"
    assert failed.events == () or list(failed.events) == []
    _assert_no_text([failed], canary)


def test_without_a_current_batch_no_check_span_is_made(spans: InMemorySpanExporter) -> None:
    # A check run outside any traced batch (a streaming guard's window, the CLI) is not a root span.
    tracing._check_span("default", "output", "toxicity", 0.01)
    assert spans.get_finished_spans() == ()


def test_the_endpoint_comes_from_assay_or_the_standard_variables() -> None:
    base = TracingSettings(otlp_endpoint="http://collector:4318/")
    assert base.traces_endpoint() == "http://collector:4318/v1/traces"
    full = base.model_copy(update={"otlp_traces_endpoint": "http://c:4318/custom"})
    assert full.traces_endpoint() == "http://c:4318/custom"
    ours = full.model_copy(update={"otel_endpoint": "http://mine:4318"})
    assert ours.traces_endpoint() == "http://mine:4318/v1/traces"
    assert TracingSettings(otel_endpoint="http://mine:4318/v1/traces").traces_endpoint() == (
        "http://mine:4318/v1/traces"
    )
    assert ours.model_copy(update={"sdk_disabled": True}).traces_endpoint() is None


def test_the_standard_variables_are_read_under_their_own_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:4318/v1/traces")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "assay-eu")
    settings = TracingSettings()
    assert (settings.traces_endpoint(), settings.service_name) == ("http://c:4318/v1/traces", "assay-eu")


def test_an_endpoint_without_the_extra_is_a_start_up_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    with pytest.raises(ConfigError, match=r"assay\[otel\]"):
        tracing.install_tracing("assay-api", TracingSettings(otel_endpoint="http://127.0.0.1:9"))
    assert not tracing.enabled()


def test_assay_runs_without_opentelemetry_installed(tmp_path: Path) -> None:
    code = """
        import sys
        sys.modules["opentelemetry"] = None  # as if the otel extra were not installed
        import os
        from service.app import create_app
        from workers import tracing
        create_app()
        import workers.celery_app
        with tracing.span("x") as s, tracing.checks_span("default", "input", 1):
            assert s is None and not tracing.enabled()
        os.environ["ASSAY_OTEL_ENDPOINT"] = "http://127.0.0.1:9"
        from workers.settings import tracing_settings
        tracing_settings.reset()
        try:
            create_app()
        except Exception as exc:
            print(type(exc).__name__, exc)
    """
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("OTEL_") and k != "ASSAY_OTEL_ENDPOINT"},
        "ASSAY_DATA_DIR": str(tmp_path),
    }
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("ConfigError traces are configured"), out.stdout
    assert "assay[otel]" in out.stdout
