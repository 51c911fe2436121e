"""OpenTelemetry traces of the API and the workers, when an OTLP endpoint is configured.

Off unless ``ASSAY_OTEL_ENDPOINT``, ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_ENDPOINT`` is set (``workers.settings.TracingSettings``);
then every helper here is a no-op and OpenTelemetry is never imported. With
an endpoint set, the ``otel`` extra must be installed, or the process stops
at start-up with a ``ConfigError`` that names it.

Spans (attributes are ids, names and counts: never a prompt, an output or a
key; an exception is recorded by its type only, as its message may quote text):

- ``METHOD /route/{template}``: one per HTTP request (``service/tracing.py``);
- ``assay.job.submit``: recording and queueing a generation job;
- ``assay.task NAME``: a Celery task in a worker, the child of the span that
  sent it: the trace context travels in the message headers (``traceparent``,
  ``tracestate``) beside the request id, so API and worker spans share a trace;
- ``assay.evaluate``: one batch of texts through a policy's checks at a
  stage (the API's micro-batch, a worker's input or output checks) and under
  it ``assay.check NAME`` per check;
- ``assay.generation``: a worker's batched decode of its jobs' prompts.

The evaluators import no tracing library: check spans are made here from the
timings they report (``evaluators.telemetry``), under the batch span current
in the thread that ran the checks.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from importlib import metadata
from typing import Any
from urllib.parse import urlsplit

from celery.signals import before_task_publish, task_failure, task_postrun, task_prerun

from evaluators.errors import ConfigError
from evaluators.telemetry import on_check_timing
from workers.settings import TracingSettings, tracing_settings

log = logging.getLogger(__name__)

AttributeValue = str | int | float | bool
Attributes = Mapping[str, AttributeValue]

EXTRA = "otel"
"""The optional dependencies traces need: ``pip install 'assay[otel]'``."""

TRACE_HEADERS = ("traceparent", "tracestate")
"""W3C trace context, carried in Celery message headers and read from HTTP requests."""

_tracer: Any = None
"""This process's tracer; None while traces are off (the helpers then do nothing)."""
_installed = False
_lock = threading.Lock()
_batch: ContextVar[tuple[str, str, int] | None] = ContextVar("assay_trace_batch", default=None)
"""Policy, stage and size of the batch whose checks run in this thread now (for the check spans)."""
_tasks: dict[tuple[str, int], tuple[Any, Any]] = {}
"""Running tasks' spans and context tokens, by task id and thread (a threads pool runs several)."""


def _version() -> str:
    try:
        return metadata.version("assay")
    except metadata.PackageNotFoundError:
        return "0"


def _where(url: str) -> str:
    # Host, port and path only: a URL may carry credentials, and logs never do.
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path}"


def install_tracing(default_service: str, settings: TracingSettings | None = None) -> bool:
    """Export this process's spans over OTLP/HTTP when an endpoint is set; True when traces are on.

    Once per process (later calls change nothing): the API calls it as ``assay-api`` before the
    Celery app does as ``assay-worker``. ``OTEL_SERVICE_NAME`` names both when set.
    """
    global _installed
    settings = settings or tracing_settings()
    endpoint = settings.traces_endpoint()
    with _lock:
        if _installed or endpoint is None:
            return _tracer is not None
        try:
            from opentelemetry import trace
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError as exc:
            raise ConfigError(
                f"traces are configured (to {_where(endpoint)}) but OpenTelemetry is not installed "
                f"({exc.name or exc}): install the '{EXTRA}' extra, pip install 'assay[{EXTRA}]', or unset "
                "ASSAY_OTEL_ENDPOINT and OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT"
            ) from exc
        service = settings.service_name or default_service
        resource = Resource.create({"service.name": service, "service.version": _version()})
        # The sampler comes from OTEL_TRACES_SAMPLER (default: parent-based, always on); the exporter
        # reads OTEL_EXPORTER_OTLP_HEADERS, _TIMEOUT and _COMPRESSION itself.
        provider = TracerProvider(resource=resource)
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
        # Global too, so instrumentation an operator adds reports into the same traces.
        trace.set_tracer_provider(provider)
        use_provider(provider)
        _installed = True
    log.info("traces go to %s over OTLP/HTTP as service %s", _where(endpoint), service)
    return True


def use_provider(provider: Any) -> None:
    """Make ``provider``'s tracer this process's (None: traces off); tests pass an in-memory one."""
    global _tracer
    _tracer = provider.get_tracer("assay", _version()) if provider is not None else None
    if provider is not None:
        on_check_timing(_check_span)


def enabled() -> bool:
    return _tracer is not None


@contextmanager
def span(
    name: str,
    attributes: Attributes | None = None,
    *,
    kind: str = "internal",
    parent: Any = None,
    links: Sequence[Any] = (),
    carrier: Mapping[str, str] | None = None,
) -> Iterator[Any]:
    """A span current for the block (yields it; None when traces are off).

    ``kind``: internal, server, client, producer or consumer. Its parent is the current span,
    or ``parent`` (a span context from ``current_span_context``), or the remote one in
    ``carrier`` (W3C headers); ``links`` are more span contexts it relates to.
    """
    tracer = _tracer
    if tracer is None:
        yield None
        return
    from opentelemetry import propagate, trace

    context = None
    if parent is not None:
        context = trace.set_span_in_context(trace.NonRecordingSpan(parent))
    elif carrier is not None:
        context = propagate.extract(dict(carrier))
    with tracer.start_as_current_span(
        name,
        context=context,
        kind=trace.SpanKind[kind.upper()],
        attributes=dict(attributes or {}),
        links=[trace.Link(sc) for sc in links],
        # Exceptions by type only (below): a message may quote the text it failed on.
        record_exception=False,
        set_status_on_exception=False,
    ) as current:
        try:
            yield current
        except BaseException as exc:
            fail(current, exc)
            raise


def fail(current: Any, exc: BaseException | str) -> None:
    """Mark ``current`` failed, naming the exception's type (never its message)."""
    if current is None:
        return
    from opentelemetry.trace import Status, StatusCode

    what = exc if isinstance(exc, str) else type(exc).__name__
    current.set_status(Status(StatusCode.ERROR, what))
    current.set_attribute("error.type", what)


def set_attributes(current: Any, attributes: Attributes) -> None:
    """Set ``attributes`` on ``current`` (a span from ``span``; None does nothing)."""
    if current is not None:
        current.set_attributes(dict(attributes))


def annotate(attributes: Attributes) -> None:
    """Set ``attributes`` on the span current in this thread or task, if any."""
    if _tracer is None:
        return
    from opentelemetry import trace

    trace.get_current_span().set_attributes(dict(attributes))


def current_span_context() -> Any:
    """The current span's context (to parent or link work done elsewhere), or None."""
    if _tracer is None:
        return None
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    return context if context.is_valid else None


@contextmanager
def checks_span(policy: str, stage: str, size: int, parents: Sequence[Any] = ()) -> Iterator[None]:
    """``assay.evaluate`` around one batch through ``policy``'s checks; ``assay.check`` spans go under it.

    ``parents``: span contexts of the requests in the batch (the API's micro-batches run in a
    thread pool, with no current span): the batch is the child of the first and links the others.
    Without them it is the child of the current span (a worker's task).
    """
    if _tracer is None:
        yield
        return
    # By ids: a span context holds a trace state, which does not hash.
    distinct = list({(p.trace_id, p.span_id): p for p in parents if p is not None}.values())
    attributes: dict[str, AttributeValue] = {
        "assay.policy": policy,
        "assay.stage": stage,
        "assay.batch.size": size,
    }
    parent, links = (distinct[0], distinct[1:]) if distinct else (None, [])
    token = _batch.set((policy, stage, size))
    try:
        with span("assay.evaluate", attributes, parent=parent, links=links):
            yield
    finally:
        _batch.reset(token)


def _check_span(policy: str, stage: str, check: str, seconds: float) -> None:
    # Called by the engine right after a check ran on the batch, in its thread: the span is
    # made after the fact, ending now and starting ``seconds`` ago, under the batch span.
    tracer, batch = _tracer, _batch.get()
    if tracer is None or batch is None:
        return
    end = time.time_ns()
    attributes = {
        "assay.policy": policy,
        "assay.stage": stage,
        "assay.check": check,
        "assay.batch.size": batch[2],
    }
    current = tracer.start_span(
        f"assay.check {check}", start_time=end - int(seconds * 1e9), attributes=attributes
    )
    current.end(end_time=end)


# ------------------------------------------------------------------ Celery


def _inject(headers: dict[str, Any] | None = None, **_: Any) -> None:
    # before_task_publish: the sending span's context into the message headers.
    if _tracer is None or headers is None:
        return
    from opentelemetry import propagate

    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    for name in TRACE_HEADERS:
        if name in carrier:
            headers.setdefault(name, carrier[name])


def _task_started(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    # task_prerun, in the thread that runs the task: a consumer span, current until task_postrun.
    tracer = _tracer
    if tracer is None or task is None:
        return
    from opentelemetry import context, propagate, trace

    request = getattr(task, "request", None)
    carrier = {k: v for k in TRACE_HEADERS if isinstance(v := getattr(request, k, None), str)}
    remote = propagate.extract(carrier)
    attributes: dict[str, AttributeValue] = {
        "messaging.system": "celery",
        "celery.task_name": str(task.name),
        "celery.task_id": str(task_id),
        "celery.retries": int(getattr(request, "retries", 0) or 0),
    }
    queue = (getattr(request, "delivery_info", None) or {}).get("routing_key")
    if isinstance(queue, str):
        attributes["messaging.destination.name"] = queue
    rid = getattr(request, "request_id", None)
    if isinstance(rid, str):
        attributes["assay.request_id"] = rid
    current = tracer.start_span(
        f"assay.task {task.name}", context=remote, kind=trace.SpanKind.CONSUMER, attributes=attributes
    )
    token = context.attach(trace.set_span_in_context(current, remote))
    with _lock:
        _tasks[(str(task_id), threading.get_ident())] = (current, token)


def _task_failed(task_id: str | None = None, exception: BaseException | None = None, **_: Any) -> None:
    with _lock:
        entry = _tasks.get((str(task_id), threading.get_ident()))
    if entry is not None and exception is not None:
        fail(entry[0], exception)


def _task_finished(task_id: str | None = None, state: str | None = None, **_: Any) -> None:
    with _lock:
        entry = _tasks.pop((str(task_id), threading.get_ident()), None)
    if entry is None:
        return
    from opentelemetry import context

    current, token = entry
    if state:
        current.set_attribute("celery.state", state)
    current.end()
    try:
        context.detach(token)
    except Exception:
        log.debug("trace context of task %s not detached", task_id)


def install_task_tracing() -> None:
    """Connect the Celery handlers (idempotent); they do nothing while traces are off."""
    before_task_publish.connect(_inject, weak=False, dispatch_uid="assay-trace-out")
    task_prerun.connect(_task_started, weak=False, dispatch_uid="assay-trace-in")
    task_failure.connect(_task_failed, weak=False, dispatch_uid="assay-trace-failed")
    task_postrun.connect(_task_finished, weak=False, dispatch_uid="assay-trace-done")
