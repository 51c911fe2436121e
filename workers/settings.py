"""Worker-side settings (Celery, generation, job store), from ``ASSAY_*`` variables once."""

from __future__ import annotations

import dataclasses
from functools import lru_cache
from pathlib import Path

from evaluators.settings import PROJECT_ROOT, from_env


@dataclasses.dataclass(frozen=True)
class WorkerSettings:
    """How jobs are queued, run and recorded."""

    broker_url: str = ""
    """Celery broker; empty means embedded: kombu's filesystem transport (ASSAY_BROKER_URL)."""

    result_backend: str = ""
    """Celery results; empty: the broker's Redis (db 1), or files when embedded (ASSAY_RESULT_BACKEND)."""

    database_url: str = ""
    """SQLAlchemy URL of the job store. Empty: SQLite under data_dir (ASSAY_DATABASE_URL)."""

    data_dir: Path = PROJECT_ROOT / "var"
    """Folder for embedded-mode state: broker files, results, the SQLite store (ASSAY_DATA_DIR)."""

    policy_dir: Path = PROJECT_ROOT / "policies"
    """Policies the workers load; must match the API's (ASSAY_POLICY_DIR)."""

    default_model: str = "smollm2"
    """Model used when a request names none (ASSAY_DEFAULT_MODEL)."""

    model_queues: tuple[str, ...] = ()
    """Routing as MODEL=QUEUE pairs, comma-separated, e.g. 'llama-8b=gpu' (ASSAY_MODEL_QUEUES)."""

    default_queue: str = "cpu"
    """Queue for models not named in model_queues (ASSAY_DEFAULT_QUEUE)."""

    device: str = "auto"
    """Generator device: auto, cpu or cuda (ASSAY_DEVICE)."""

    dtype: str = "auto"
    """Generator dtype: auto (bf16/fp16 on CUDA, fp32 on CPU), fp32, bf16, fp16 (ASSAY_DTYPE)."""

    attn_implementation: str = "sdpa"
    """Attention kernel: sdpa or eager (ASSAY_ATTN_IMPLEMENTATION)."""

    quantize_int8: bool = False
    """Dynamic int8 quantization of Linear layers on CPU (ASSAY_QUANTIZE_INT8)."""

    compile: bool = False
    """torch.compile the decoder (ASSAY_COMPILE)."""

    max_batch_size: int = 16
    """Most generation rows in one batched forward pass (ASSAY_MAX_BATCH_SIZE)."""

    batch_wait_ms: float = 10.0
    """How long the generator waits to gather concurrent jobs into a batch (ASSAY_BATCH_WAIT_MS)."""

    worker_concurrency: int = 16
    """Threads per worker process; concurrent jobs share batched generate calls (ASSAY_WORKER_CONCURRENCY)."""

    audit_chunk_size: int = 8
    """Audit items per chunk task; sized for one batched decode (ASSAY_AUDIT_CHUNK_SIZE)."""

    audit_stalled_after_s: float = 300.0
    """Audits with no new result for this long get missing items re-sent (ASSAY_AUDIT_STALLED_AFTER_S)."""

    visibility_timeout_s: int = 3600
    """Redis: a vanished worker's unacked jobs are redelivered after this (ASSAY_VISIBILITY_TIMEOUT_S)."""

    job_time_limit_s: int = 600
    """Hard time limit of one generation job (ASSAY_JOB_TIME_LIMIT_S)."""

    @property
    def embedded(self) -> bool:
        return not self.broker_url

    def queue_for(self, model: str) -> str:
        for pair in self.model_queues:
            name, _, queue = pair.partition("=")
            if name.strip() == model and queue.strip():
                return queue.strip()
        return self.default_queue

    def queues(self) -> list[str]:
        named = {p.partition("=")[2].strip() for p in self.model_queues if "=" in p}
        return sorted({self.default_queue, *named} - {""})

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir / 'assay.db'}"

    def resolved_result_backend(self) -> str:
        if self.result_backend:
            return self.result_backend
        if self.embedded:
            return f"file://{self.data_dir / 'results'}"
        if self.broker_url.startswith("redis"):
            base = self.broker_url.rsplit("/", 1)[0] if self.broker_url.count("/") > 2 else self.broker_url
            return f"{base}/1"
        return "rpc://"


@lru_cache(maxsize=1)
def worker_settings() -> WorkerSettings:
    """Worker settings, read once per process."""
    return from_env(WorkerSettings)
