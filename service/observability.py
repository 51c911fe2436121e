"""The API's request ids, access log and Prometheus ``/metrics``.

- Every response carries ``X-Request-ID``: the caller's (a token of 1-128
  printable characters) or a new one. It is current for the whole request
  (``evaluators.logs.request_id``), so log records and the Celery tasks the
  request queues carry it (``workers/context.py``).
- One access log line per request: method, route template, status and
  milliseconds; never the body nor the query string.
- ``GET /metrics``: request latency histograms per route (Litestar's
  Prometheus middleware, ``assay_http_*``, route templates as labels), the
  check and batch histograms and model load times (``workers/metrics.py``),
  and at scrape time the queue depth per queue and the jobs by status.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

from litestar.plugins.prometheus import PrometheusConfig, PrometheusController
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from evaluators.contracts import Status
from evaluators.logs import accept_request_id, request_id
from service.auth import PUBLIC
from store.jobs import job_store
from workers.metrics import SECONDS, DriftSource, install_process_metrics
from workers.settings import WorkerSettings

log = logging.getLogger("assay.access")

HEADER = "x-request-id"


def request_context(app: ASGIApp) -> ASGIApp:
    """Wrap the whole app (404s and 405s included): request id in and out, one access log line."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        sent = dict(scope.get("headers") or []).get(HEADER.encode())
        rid = accept_request_id(sent.decode("latin-1") if sent else None)
        token = request_id.set(rid)
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (HEADER.encode(), rid.encode())]
            await send(message)

        try:
            await app(scope, receive, send_with_id)
        finally:
            elapsed_ms = (time.perf_counter() - started) * 1000
            route = scope.get("path_template") or "(unrouted)"
            # Who asked (service/auth.py leaves the caller in the connection's state): a key id, never a key.
            caller: Any = (scope.get("state") or {}).get("principal")
            key_id = getattr(caller, "key_id", None)
            who = f" key={key_id} tenant={caller.tenant}" if key_id else ""
            log.info("%s %s %d %.1f ms%s", scope.get("method"), route, status, elapsed_ms, who)
            request_id.reset(token)

    return middleware


def prometheus_config() -> PrometheusConfig:
    """Latency per route template, method and status; ``/metrics`` itself is not measured."""
    return PrometheusConfig(
        app_name="assay", prefix="assay_http", group_path=True, exclude=["^/metrics$"], buckets=list(SECONDS)
    )


class MetricsController(PrometheusController):
    path = "/metrics"
    include_in_schema = False
    # Open like /healthz: scrapers carry no API key; it holds counts and timings, no text.
    opt = PUBLIC


class BackendCollector(Collector):
    """Scrape-time figures from the queue and the job store; a backend that does not answer is skipped."""

    def __init__(self) -> None:
        self.settings: WorkerSettings | None = None
        self.store_wait_s = 0.0

    def collect(self) -> Iterator[GaugeMetricFamily]:
        settings = self.settings
        if settings is None:
            return
        depth = GaugeMetricFamily("assay_queue_depth", "Messages waiting in each queue.", labels=["queue"])
        try:
            for queue, n in queue_depths(settings).items():
                depth.add_metric([queue], n)
            yield depth
        except Exception as exc:
            log.warning("queue depth not measured: %s", type(exc).__name__)
        jobs = GaugeMetricFamily("assay_jobs", "Generation jobs in the store, by status.", labels=["status"])
        try:
            counts = job_store(settings.resolved_database_url(), retry_s=self.store_wait_s).count_by_status()
            for status in Status:
                jobs.add_metric([status.value], counts.get(status.value, 0))
            yield jobs
        except Exception as exc:
            log.warning("jobs by status not measured: %s", type(exc).__name__)

    def describe(self) -> Iterator[Any]:
        return iter(())


def queue_depths(settings: WorkerSettings) -> dict[str, int]:
    """Messages waiting per queue: Redis list lengths, or the embedded broker's message files."""
    queues = settings.queues()
    if settings.embedded:
        from workers.celery_app import broker_folders

        folder = broker_folders(settings.data_dir)["queue"]
        names = [p.name for p in folder.iterdir()] if folder.is_dir() else []
        return {q: sum(1 for n in names if n.endswith(f".{q}.msg")) for q in queues}
    import redis

    client = redis.Redis.from_url(settings.broker_url, socket_timeout=1, socket_connect_timeout=1)
    try:
        return {q: int(client.llen(q)) for q in queues}
    finally:
        client.close()


_collector = BackendCollector()
_registered = False


def install_metrics(settings: WorkerSettings, store_wait_s: float, drift: DriftSource) -> None:
    """Register the API's collectors once per process; the latest app's settings are the ones read."""
    global _registered
    install_process_metrics(drift=drift)
    _collector.settings = settings
    _collector.store_wait_s = store_wait_s
    if not _registered:
        REGISTRY.register(_collector)
        _registered = True
