"""Prometheus metrics of a process that runs checks or jobs (the API and the workers share these).

In every process: check latency per policy, stage and check, and the batch
sizes the checks ran on (``evaluators.telemetry``); model load time per
registry key; GPU memory where CUDA is present. In workers also: jobs
finished by status, job run time, rows of the decode batch each job ran in,
and the job sweep's outcomes. A worker serves them on ``ASSAY_METRICS_PORT``
(``/metrics``); the API serves its own on its HTTP port.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import REGISTRY, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from evaluators.drift.runtime import DriftRuntime
from evaluators.models import registry
from evaluators.telemetry import on_batch_size, on_check_timing

log = logging.getLogger(__name__)

SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

CHECK_SECONDS = Histogram(
    "assay_check_duration_seconds",
    "Time one check took on one batch of texts.",
    ["policy", "stage", "check"],
    buckets=SECONDS,
)
CHECK_BATCH = Histogram(
    "assay_check_batch_size",
    "Texts per batch the checks ran on (the API's micro-batches; a worker's job batches).",
    ["policy", "stage"],
    buckets=SIZES,
)
JOBS_FINISHED = Counter(
    "assay_jobs_finished_total", "Generation jobs this worker finished, by status.", ["status"]
)
JOB_SECONDS = Histogram(
    "assay_job_duration_seconds", "Run time of a generation job in a worker.", buckets=SECONDS
)
GENERATION_BATCH_ROWS = Histogram(
    "assay_generation_batch_rows", "Rows of the batched decode each finished job ran in.", buckets=SIZES
)
SWEPT = Counter("assay_jobs_swept_total", "Orphaned jobs the job sweep re-queued or failed.", ["outcome"])


def _observe_check(policy: str, stage: str, check: str, seconds: float) -> None:
    CHECK_SECONDS.labels(policy, stage, check).observe(seconds)


def _observe_batch(policy: str, stage: str, size: int) -> None:
    CHECK_BATCH.labels(policy, stage).observe(size)


DriftSource = Callable[[], DriftRuntime | None]
"""This process's drift runtime, or None when it has none (it is never built just to be measured)."""


class _ProcessCollector(Collector):
    """Scrape-time figures: model load times, drift events by outcome, GPU memory where CUDA runs."""

    def __init__(self) -> None:
        self.drift: DriftSource = lambda: None

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        loads = GaugeMetricFamily(
            "assay_model_load_seconds", "Seconds each model (registry key) took to load.", labels=["model"]
        )
        for key, seconds in sorted(registry().load_seconds().items()):
            loads.add_metric([key], seconds)
        yield loads
        runtime = self.drift()
        if runtime is not None and runtime.recorder is not None:
            stats = runtime.recorder.stats()
            events = CounterMetricFamily(
                "assay_drift_events",
                "Drift events of this process: recorded, acknowledged (durable), dropped, failed, "
                "and unembedded (written without the embedding the encoder could not make).",
                labels=["outcome"],
            )
            for outcome in ("recorded", "acknowledged", "dropped", "failed", "unembedded"):
                events.add_metric([outcome], float(getattr(stats, outcome)))
            yield events
        torch = sys.modules.get("torch")  # never imported just to be measured
        if torch is not None and torch.cuda.is_available():
            gpu = GaugeMetricFamily(
                "assay_gpu_memory_bytes", "CUDA memory held by this process.", labels=["device", "kind"]
            )
            for index in range(torch.cuda.device_count()):
                gpu.add_metric([str(index), "allocated"], float(torch.cuda.memory_allocated(index)))
                gpu.add_metric([str(index), "reserved"], float(torch.cuda.memory_reserved(index)))
            yield gpu

    def describe(self) -> Iterator[Any]:
        return iter(())


_installed = False
_install_lock = threading.Lock()
_collector = _ProcessCollector()


def install_process_metrics(drift: DriftSource | None = None) -> None:
    """Subscribe the check histograms and register the scrape-time collector, once per process.

    ``drift`` says where this process's drift recorder is (the latest caller's is read).
    """
    global _installed
    with _install_lock:
        if drift is not None:
            _collector.drift = drift
        if _installed:
            return
        on_check_timing(_observe_check)
        on_batch_size(_observe_batch)
        REGISTRY.register(_collector)
        _installed = True


def serve_worker_metrics(port: int) -> None:
    """Serve this process's metrics on ``port`` (``/metrics``) from a daemon thread; 0 serves none."""
    from workers.drift import built_runtime

    install_process_metrics(drift=built_runtime)
    if port:
        start_http_server(port)
        log.info("metrics served on port %d", port)
