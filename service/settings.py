"""The API's settings, read from ``ASSAY_*`` environment variables once."""

from __future__ import annotations

import dataclasses
from functools import lru_cache
from pathlib import Path

from evaluators.settings import PROJECT_ROOT, from_env


@dataclasses.dataclass(frozen=True)
class ServiceSettings:
    """How the HTTP API runs."""

    host: str = "127.0.0.1"
    """Interface to bind (ASSAY_HOST)."""

    port: int = 8000
    """TCP port (ASSAY_PORT)."""

    policy_dir: Path = PROJECT_ROOT / "policies"
    """Folder of policy YAML files loaded at startup (ASSAY_POLICY_DIR)."""

    max_body_bytes: int = 2_000_000
    """Largest request body accepted; larger gets 413 (ASSAY_MAX_BODY_BYTES)."""

    max_batch_items: int = 256
    """Most texts in one /v1/moderate/batch call (ASSAY_MAX_BATCH_ITEMS)."""

    inference_timeout_s: float = 30.0
    """How long a moderation request waits for its batch before a 503 (ASSAY_INFERENCE_TIMEOUT_S)."""

    microbatch_max: int = 64
    """Most texts the micro-batcher hands to the checks in one call (ASSAY_MICROBATCH_MAX)."""

    microbatch_wait_ms: float = 2.0
    """Extra time the micro-batcher waits to fill a batch once it has one text (ASSAY_MICROBATCH_WAIT_MS)."""

    max_pending: int = 4096
    """Most texts queued for inference before new ones get 503 (ASSAY_MAX_PENDING)."""

    inference_threads: int = 1
    """Threads that run checks; one keeps torch from fighting itself on 2 cores (ASSAY_INFERENCE_THREADS)."""

    embedded_worker: bool = True
    """Embedded mode (no ASSAY_BROKER_URL): start a Celery worker child (ASSAY_EMBEDDED_WORKER)."""

    log_level: str = "INFO"
    """Log level for Assay's loggers (ASSAY_LOG_LEVEL)."""


@lru_cache(maxsize=1)
def service_settings() -> ServiceSettings:
    """The API's settings, read once per process."""
    return from_env(ServiceSettings)
