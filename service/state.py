"""What the API process holds: policies, their engines, and the micro-batcher."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, cast

from evaluators.audit.runner import AuditRunner
from evaluators.contracts import GenerationJob, JobResult
from evaluators.drift.runtime import DriftRuntime
from evaluators.engine import Decision, PolicyEngine, Stage
from evaluators.errors import InputError, NotReady, PayloadTooLarge
from evaluators.policy import LoadedPolicy, PolicyStore, load_policy_dir
from evaluators.runtime import release_openmp_threads
from evaluators.settings import apply_torch_threads, evaluator_settings
from service.auth import Authenticator, Principal
from service.backpressure import QueueGuard
from service.batching import MicroBatcher
from service.ratelimit import RateLimiter, build_limiter
from service.settings import ServiceSettings
from store.audits import audit_store
from store.jobs import JobStore, job_store
from store.keys import KeyStore, key_store
from workers.drift import build_runtime, observe_moderation
from workers.embedded import EmbeddedWorker
from workers.generation import require_engine
from workers.settings import WorkerSettings, worker_settings
from workers.tracing import checks_span, current_span_context

log = logging.getLogger(__name__)


def _no_batches_in_the_api(jobs: list[GenerationJob]) -> list[JobResult]:
    # The API creates, reads and cancels runs; generating their items is the workers' job.
    raise RuntimeError(f"the API process does not run audit items ({len(jobs)} sent); workers do")


@dataclass(frozen=True)
class ModerationItem:
    text: str
    context: tuple[str, ...] = ()
    span: Any = field(default=None, compare=False)
    """The request's span context when traces are on: the batch that runs the item names it."""


@dataclass
class AppState:
    """Built once at startup; shared by every request handler."""

    settings: ServiceSettings
    policies: PolicyStore
    engines: dict[str, PolicyEngine]
    executor: ThreadPoolExecutor
    batcher: MicroBatcher[ModerationItem, Decision]
    worker_settings: WorkerSettings = field(default_factory=worker_settings)
    started_at: float = field(default_factory=time.time)
    ready: bool = False
    embedded_worker: EmbeddedWorker | None = None
    drift: DriftRuntime | None = None
    """Records each moderated text as a drift event and scores it against the policy's baseline."""
    auth: Authenticator = field(init=False)
    """Turns API keys into principals (ASSAY_AUTH=required)."""
    limiter: RateLimiter = field(init=False)
    """Per-key request rates: Redis when the broker is Redis, else this process."""

    queue_guard: QueueGuard = field(init=False)
    """Refuses new jobs, audits and drift reports while their queue is deeper than allowed (503)."""

    def __post_init__(self) -> None:
        self.auth = Authenticator(self.keys, self.settings)
        self.limiter = build_limiter(self.worker_settings.broker_url)
        self.queue_guard = QueueGuard(self.worker_settings, self.settings.max_queue_depth)

    def keys(self) -> KeyStore:
        """Tenants and API keys, in the job store's database."""
        return key_store(self.worker_settings.resolved_database_url(), retry_s=self.settings.store_wait_s)

    def jobs(self) -> JobStore:
        """The job store (SQLite embedded, PostgreSQL by ASSAY_DATABASE_URL)."""
        return job_store(self.worker_settings.resolved_database_url(), retry_s=self.settings.store_wait_s)

    def audits(self) -> AuditRunner:
        """Audit runs on the store, with the API's policies; items run in workers, never here."""
        store = audit_store(self.worker_settings.resolved_database_url(), retry_s=self.settings.store_wait_s)
        return AuditRunner(store, _no_batches_in_the_api, self.policies)

    def celery(self) -> Any:
        # Imported lazily: moderation-only use never touches the queue.
        from workers.celery_app import app

        return app

    def enqueue(self, job: GenerationJob, queue: str) -> None:
        # JSON at the edge: the worker validates it back into a GenerationJob.
        self.celery().send_task(
            "assay.generate",
            args=[job.model_dump(mode="json")],
            task_id=job.job_id,
            queue=queue,
            routing_key=queue,
        )

    def send(self, task: str, args: list[Any], queue: str) -> None:
        self.celery().send_task(task, args=args, queue=queue, routing_key=queue)

    def revoke(self, job_id: str) -> None:
        self.celery().control.revoke(job_id)

    def start_embedded_worker(self) -> None:
        if self.worker_settings.embedded and self.settings.embedded_worker:
            # The child would exit at once (and be restarted, over and over): say why here.
            require_engine(self.worker_settings.generator_engine)
            self.embedded_worker = EmbeddedWorker(self.worker_settings)
            self.embedded_worker.start()

    @classmethod
    def create(cls, settings: ServiceSettings) -> AppState:
        """Load and validate every policy and build its engine with models loaded.

        Raises ``PolicyError`` (file, line, field) so a broken policy stops startup.
        """
        apply_torch_threads()
        policies = PolicyStore(load_policy_dir(evaluator_settings().policy_dir))
        started = time.perf_counter()
        engines = {lp.name: PolicyEngine.build(lp) for lp in policies}
        log.info(
            "loaded %d policies (%s) and their models in %.1f s",
            len(engines),
            ", ".join(sorted(engines)),
            time.perf_counter() - started,
        )
        executor = ThreadPoolExecutor(
            max_workers=settings.inference_threads, thread_name_prefix="assay-infer"
        )
        # Drift: events go to the store through a bounded buffer; the encoder and baselines load now.
        drift = build_runtime(worker_settings())
        drift.warm_up(policies)
        # Inference runs in the executor's thread from now on; the OpenMP pool that loading
        # started in this thread would throttle that thread's (evaluators/runtime.py).
        release_openmp_threads()

        def run(key: Hashable, items: Sequence[ModerationItem]) -> list[Decision]:
            policy_name, stage = cast(tuple[str, Stage], key)
            engine = engines[policy_name]
            contexts = [it.context for it in items] if any(it.context for it in items) else None
            # The pool's threads have no current span: the batch's parent and links are its requests'.
            with checks_span(policy_name, stage, len(items), parents=[it.span for it in items]):
                decisions = engine.evaluate([it.text for it in items], stage, contexts=contexts)
            # Still in the inference thread: embedding and scoring stay off the event loop.
            observe_moderation(drift, engine.loaded, stage, [it.text for it in items], decisions)
            return decisions

        batcher: MicroBatcher[ModerationItem, Decision] = MicroBatcher(
            run,
            executor,
            max_batch=settings.microbatch_max,
            wait_ms=settings.microbatch_wait_ms,
            timeout_s=settings.inference_timeout_s,
            max_pending=settings.max_pending,
        )
        return cls(settings, policies, engines, executor, batcher, drift=drift)

    def policy(self, name: str, principal: Principal | None = None) -> LoadedPolicy:
        """The policy ``name``; not found when ``principal``'s tenant may not use it."""
        if principal is not None:
            principal.check_policy(name)
        return self.policies.get(name)

    def check_limits(self, lp: LoadedPolicy, texts: Sequence[str]) -> None:
        limits = lp.policy.limits
        if len(texts) > limits.max_batch:
            raise PayloadTooLarge(
                f"{len(texts)} texts sent; policy {lp.name!r} accepts at most {limits.max_batch}",
                limit=limits.max_batch,
            )
        for i, text in enumerate(texts):
            if len(text) > limits.max_chars:
                raise PayloadTooLarge(
                    f"text {i} has {len(text)} characters; policy {lp.name!r} accepts at most "
                    f"{limits.max_chars}",
                    limit=limits.max_chars,
                    index=i,
                )

    async def moderate(
        self, policy: str, stage: Stage, items: Sequence[ModerationItem], principal: Principal | None = None
    ) -> tuple[LoadedPolicy, list[Decision]]:
        if not self.ready:
            raise NotReady("models are still loading")
        lp = self.policy(policy, principal)
        if stage not in ("input", "output"):
            raise InputError(f"stage must be 'input' or 'output', not {stage!r}")
        self.check_limits(lp, [it.text for it in items])
        parent = current_span_context()
        if parent is not None:
            items = [dataclasses.replace(it, span=parent) for it in items]
        decisions = await self.batcher.submit_many((lp.name, stage), list(items))
        return lp, decisions

    async def close(self) -> None:
        if self.embedded_worker is not None:
            await asyncio.to_thread(self.embedded_worker.stop)
        await self.batcher.close()
        await self.limiter.close()
        if self.drift is not None:
            # Write what is buffered: events the recorder took are not lost on a clean shutdown.
            await asyncio.to_thread(self.drift.close)
        self.executor.shutdown(wait=False, cancel_futures=True)
