"""The API's settings, from ``ASSAY_*`` environment variables once per process.

The policy folder is the evaluators' setting (``evaluators.settings``), and the
queue and job store are the workers' (``workers.settings``): one variable, one field.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from evaluators.settings import AssaySettings, SettingsAccessor


class ServiceSettings(AssaySettings):
    """How the HTTP API runs."""

    host: str = "127.0.0.1"
    """Interface to bind (ASSAY_HOST)."""

    port: int = Field(default=8000, ge=0, le=65535)
    """TCP port (ASSAY_PORT)."""

    max_body_bytes: int = Field(default=2_000_000, ge=1)
    """Largest request body accepted; larger gets 413 (ASSAY_MAX_BODY_BYTES)."""

    max_batch_items: int = Field(default=256, ge=1)
    """Most texts in one /v1/moderate/batch call (ASSAY_MAX_BATCH_ITEMS)."""

    inference_timeout_s: float = Field(default=30.0, gt=0)
    """How long a moderation request waits for its batch before a 504 (ASSAY_INFERENCE_TIMEOUT_S)."""

    microbatch_max: int = Field(default=64, ge=1)
    """Most texts the micro-batcher hands to the checks in one call (ASSAY_MICROBATCH_MAX)."""

    microbatch_wait_ms: float = Field(default=2.0, ge=0)
    """Extra time the micro-batcher waits to fill a batch once it has one text (ASSAY_MICROBATCH_WAIT_MS)."""

    max_pending: int = Field(default=4096, ge=1)
    """Most texts queued for inference before new ones get 503 (ASSAY_MAX_PENDING)."""

    inference_threads: int = Field(default=1, ge=1)
    """Threads that run checks; one keeps torch from fighting itself on 2 cores (ASSAY_INFERENCE_THREADS)."""

    embedded_worker: bool = True
    """Embedded mode (no ASSAY_BROKER_URL): start a Celery worker child (ASSAY_EMBEDDED_WORKER)."""

    store_wait_s: float = Field(default=2.0, ge=0)
    """How long a request retries a silent database before a 503 with Retry-After (ASSAY_STORE_WAIT_S)."""

    log_level: str = "INFO"
    """Log level for Assay's loggers (ASSAY_LOG_LEVEL)."""

    auth: Literal["off", "required"] = "off"
    """API keys: 'required' on every route but health, metrics and docs; 'off' for a local `make run`,
    where every caller acts as an admin of the default tenant (ASSAY_AUTH)."""

    auth_cache_s: float = Field(default=5.0, ge=0)
    """How long a verified key is trusted before the store is read again; a revoked key stops working
    within this time in every API process (ASSAY_AUTH_CACHE_S)."""

    rate_per_min: int = Field(default=600, ge=0)
    """Requests per minute per key when its tenant sets none; 0 is unlimited (ASSAY_RATE_PER_MIN)."""

    rate_burst: int = Field(default=60, ge=1)
    """Requests a key may send at once before the rate applies, when its tenant sets none; capped at
    the rate (ASSAY_RATE_BURST)."""

    max_active_jobs: int = Field(default=0, ge=0)
    """Queued and running generation jobs a tenant may have when it sets none; 0 is unlimited
    (ASSAY_MAX_ACTIVE_JOBS)."""

    max_queue_depth: int = Field(default=1000, ge=0)
    """Messages waiting in a queue beyond which new generation jobs, audits and drift reports get 503
    with Retry-After; 0 never refuses (ASSAY_MAX_QUEUE_DEPTH)."""

    request_timeout_s: float = Field(default=300.0, ge=0)
    """A request that has not started its answer after this long gets 504; streams are not cut once they
    start; 0 is no limit. Above the longest ?wait= (120 s) (ASSAY_REQUEST_TIMEOUT_S)."""


service_settings = SettingsAccessor(ServiceSettings)
"""The API's settings, parsed once per process."""
