"""Worker-side settings (Celery, generation, job store), from ``ASSAY_*`` variables once per process.

The device and the policy folder are the evaluators' settings
(``evaluators.settings``): one variable, one field.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from evaluators.settings import PROJECT_ROOT, AssaySettings, SettingsAccessor, UserPath


class WorkerSettings(AssaySettings):
    """How jobs are queued, run and recorded."""

    broker_url: str = ""
    """Celery broker; empty means embedded: kombu's filesystem transport (ASSAY_BROKER_URL)."""

    database_url: str = ""
    """SQLAlchemy URL of the job store. Empty: SQLite under data_dir (ASSAY_DATABASE_URL)."""

    data_dir: UserPath = PROJECT_ROOT / "var"
    """Folder for embedded-mode state: broker files and the SQLite store (ASSAY_DATA_DIR)."""

    default_model: str = "smollm2"
    """Model used when a request names none (ASSAY_DEFAULT_MODEL)."""

    # NoDecode: the variable is 'a=b,c=d', not JSON.
    model_queues: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    """Routing as MODEL=QUEUE pairs, comma-separated, e.g. 'llama-8b=gpu' (ASSAY_MODEL_QUEUES)."""

    default_queue: str = Field(default="cpu", min_length=1)
    """Queue for models not named in model_queues (ASSAY_DEFAULT_QUEUE)."""

    generator_engine: Literal["transformers", "llama-cpp"] = "transformers"
    """What decodes: transformers (torch, continuous batching of concurrent jobs) or llama-cpp (the
    model's GGUF on llama-cpp-python, concurrent jobs batched per decode step as well; needs the
    llama-cpp extra, `make llama-cpp`) (ASSAY_GENERATOR_ENGINE)."""

    llama_threads: int = Field(default=0, ge=0)
    """Threads of the llama-cpp engine; 0: every core (ASSAY_LLAMA_THREADS)."""

    llama_weights: Literal["f16", "q8_0", "source"] = "f16"
    """Weights of the llama-cpp engine: the GGUF converted once to f16 (greedy text as the
    transformers engine's, whatever the batch; the default) or q8_0, or the GGUF as it is
    (ASSAY_LLAMA_WEIGHTS)."""

    llama_context: int = Field(default=0, ge=0)
    """KV cache cells of the llama-cpp engine, shared by the jobs decoding at once; 0: the model's
    training context (ASSAY_LLAMA_CONTEXT)."""

    dtype: str = "auto"
    """Generator dtype: auto (bf16/fp16 on CUDA, fp32 on CPU), fp32, bf16, fp16 (ASSAY_DTYPE)."""

    attn_implementation: str = "sdpa"
    """Attention kernel: sdpa or eager (ASSAY_ATTN_IMPLEMENTATION)."""

    quantize_int8: bool = False
    """Dynamic int8 quantization of Linear layers on CPU (ASSAY_QUANTIZE_INT8)."""

    compile: bool = False
    """torch.compile the decoder (ASSAY_COMPILE)."""

    max_batch_size: int = Field(default=16, ge=1)
    """Most generation rows in one batched forward pass (ASSAY_MAX_BATCH_SIZE)."""

    continuous_batching: bool = True
    """Jobs join the running decode at the next step; off: gathered batches (ASSAY_CONTINUOUS_BATCHING)."""

    batch_wait_ms: float = Field(default=10.0, ge=0)
    """How long the generator waits to gather concurrent jobs into a batch (ASSAY_BATCH_WAIT_MS)."""

    worker_concurrency: int = Field(default=16, ge=1)
    """Threads per worker process; concurrent jobs share batched generate calls (ASSAY_WORKER_CONCURRENCY)."""

    audit_chunk_size: int = Field(default=8, ge=1)
    """Audit items per chunk task; sized for one batched decode (ASSAY_AUDIT_CHUNK_SIZE)."""

    audit_stalled_after_s: float = Field(default=300.0, gt=0)
    """Audits with no new result for this long get missing items re-sent (ASSAY_AUDIT_STALLED_AFTER_S)."""

    visibility_timeout_s: int = Field(default=3600, gt=0)
    """Redis: a vanished worker's unacked jobs are redelivered after this (ASSAY_VISIBILITY_TIMEOUT_S)."""

    job_time_limit_s: int = Field(default=600, gt=0)
    """Hard time limit of one generation job (ASSAY_JOB_TIME_LIMIT_S)."""

    job_lease_s: float = Field(default=20.0, gt=0)
    """A running job with no heartbeat for this long is orphaned: re-queued or failed (ASSAY_JOB_LEASE_S)."""

    heartbeat_interval_s: float = Field(default=5.0, gt=0)
    """How often a worker renews its jobs' lease; below job_lease_s (ASSAY_HEARTBEAT_INTERVAL_S)."""

    job_sweep_interval_s: float = Field(default=5.0, gt=0)
    """How often beat sends the sweep of orphaned jobs (ASSAY_JOB_SWEEP_INTERVAL_S)."""

    job_max_attempts: int = Field(default=3, ge=1)
    """Runs of one job before an orphaned job is failed instead of re-queued (ASSAY_JOB_MAX_ATTEMPTS)."""

    store_retry_s: float = Field(default=30.0, ge=0)
    """How long a worker retries a database that does not answer (ASSAY_STORE_RETRY_S)."""

    metrics_port: int = Field(default=0, ge=0, le=65535)
    """Port where a worker serves Prometheus /metrics; 0 serves none (ASSAY_METRICS_PORT)."""

    @model_validator(mode="after")
    def _heartbeat_within_lease(self) -> WorkerSettings:
        if self.heartbeat_interval_s >= self.job_lease_s:
            raise ValueError(
                f"heartbeat_interval_s ({self.heartbeat_interval_s:g}) must be below job_lease_s "
                f"({self.job_lease_s:g}), or live jobs would look orphaned"
            )
        return self

    drift_buffer: int = Field(default=50_000, ge=1)
    """Drift events buffered per process before new ones are dropped and counted (ASSAY_DRIFT_BUFFER)."""

    drift_batch: int = Field(default=2_000, ge=1)
    """Drift events written per store transaction (ASSAY_DRIFT_BATCH)."""

    drift_flush_interval_s: float = Field(default=0.5, gt=0)
    """Longest a drift event waits in the buffer before it is written (ASSAY_DRIFT_FLUSH_INTERVAL_S)."""

    drift_profile_ttl_s: float = Field(default=300.0, gt=0)
    """Seconds a baseline profile for per-result drift is kept before a reload (ASSAY_DRIFT_PROFILE_TTL_S)."""

    # NoDecode: the variable is 'default=hourly,strict=daily', not JSON.
    drift_schedule: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    """Scheduled drift reports as POLICY=PERIOD pairs (hourly, daily or seconds like 90s),
    run by Celery beat (ASSAY_DRIFT_SCHEDULE)."""

    drift_webhook_url: str = ""
    """Where drift alerts are POSTed when a report finds drift; empty: no alerts (ASSAY_DRIFT_WEBHOOK_URL)."""

    drift_webhook_retries: int = Field(default=4, ge=0, le=20)
    """Retries of a failed alert, with exponential backoff (ASSAY_DRIFT_WEBHOOK_RETRIES)."""

    drift_webhook_backoff_s: float = Field(default=1.0, ge=0)
    """First retry delay of an alert; doubled each retry (ASSAY_DRIFT_WEBHOOK_BACKOFF_S)."""

    @field_validator("model_queues", mode="before")
    @classmethod
    def _parse_routes(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        routes: dict[str, str] = {}
        for pair in filter(None, (p.strip() for p in value.split(","))):
            name, _, queue = (s.strip() for s in pair.partition("="))
            if not name or not queue:
                raise ValueError(f"{pair!r} is not MODEL=QUEUE")
            if name in routes:
                raise ValueError(f"model {name!r} is routed twice")
            routes[name] = queue
        return routes

    @field_validator("drift_schedule", mode="before")
    @classmethod
    def _parse_schedule(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        schedule: dict[str, str] = {}
        for pair in filter(None, (p.strip() for p in value.split(","))):
            policy, _, period = (s.strip() for s in pair.partition("="))
            if not policy or not period:
                raise ValueError(f"{pair!r} is not POLICY=PERIOD")
            schedule[policy] = period
        for period in schedule.values():
            period_seconds(period)
        return schedule

    @property
    def embedded(self) -> bool:
        return not self.broker_url

    def queue_for(self, model: str) -> str:
        return self.model_queues.get(model, self.default_queue)

    def queues(self) -> list[str]:
        return sorted({self.default_queue, *self.model_queues.values()})

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir / 'assay.db'}"


worker_settings = SettingsAccessor(WorkerSettings)
"""Worker settings, parsed once per process."""


class TracingSettings(AssaySettings):
    """Where the API's and the workers' OpenTelemetry traces go: off unless an endpoint is set.

    Besides ``ASSAY_OTEL_ENDPOINT``, the standard OpenTelemetry variables are honoured under their
    own names; the OTLP exporter and the SDK read the rest of theirs themselves (headers, timeout,
    compression, ``OTEL_TRACES_SAMPLER``, ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_BSP_*``).
    """

    # Aliased fields are set by their field names too (tests, model_copy).
    model_config = SettingsConfigDict(populate_by_name=True)

    otel_endpoint: str = ""
    """Base URL of an OTLP/HTTP collector for Assay's traces, e.g. http://collector:4318 (/v1/traces is
    appended unless the URL ends with it); wins over the OTEL_EXPORTER_OTLP_* variables
    (ASSAY_OTEL_ENDPOINT)."""

    otlp_traces_endpoint: str = Field(default="", validation_alias="OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    """Full URL traces are POSTed to, as OpenTelemetry defines it (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT)."""

    otlp_endpoint: str = Field(default="", validation_alias="OTEL_EXPORTER_OTLP_ENDPOINT")
    """Base URL of an OTLP/HTTP collector for every signal; traces go to its /v1/traces
    (OTEL_EXPORTER_OTLP_ENDPOINT)."""

    service_name: str = Field(default="", validation_alias="OTEL_SERVICE_NAME")
    """Service name on every span; empty: assay-api in the API, assay-worker in Celery processes
    (OTEL_SERVICE_NAME)."""

    sdk_disabled: bool = Field(default=False, validation_alias="OTEL_SDK_DISABLED")
    """True turns traces off whatever endpoint is set, as OpenTelemetry defines it (OTEL_SDK_DISABLED)."""

    def traces_endpoint(self) -> str | None:
        """The URL spans are exported to, or None when traces are off."""
        if self.sdk_disabled:
            return None
        if self.otel_endpoint:
            base = self.otel_endpoint.rstrip("/")
            return base if base.endswith("/v1/traces") else f"{base}/v1/traces"
        if self.otlp_traces_endpoint:
            return self.otlp_traces_endpoint
        if self.otlp_endpoint:
            return f"{self.otlp_endpoint.rstrip('/')}/v1/traces"
        return None


tracing_settings = SettingsAccessor(TracingSettings)
"""Trace export settings, parsed once per process."""


def period_seconds(period: str) -> float:
    """Seconds of a report period: hourly, daily, or a number of seconds such as 90s."""
    named = {"hourly": 3600.0, "daily": 86400.0}
    if period in named:
        return named[period]
    text = period.removesuffix("s")
    try:
        seconds = float(text)
    except ValueError:
        raise ValueError(f"period {period!r} is not hourly, daily or a number of seconds") from None
    if seconds <= 0:
        raise ValueError(f"period {period!r} must be positive")
    return seconds
