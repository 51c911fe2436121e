"""The guarded generation pipeline: input checks -> generate -> output checks.

Called by the thin Celery task. A blocked prompt is never generated; a
redacted prompt is generated from its redacted form; the output is filtered
by the policy's output checks before anyone sees it.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from concurrent.futures import Future

from evaluators.contracts import (
    CheckErrorRecord,
    FairnessVariant,
    FindingRecord,
    GenerationJob,
    JobResult,
    ModelInfo,
    PolicyIdentity,
    StageResult,
    Usage,
)
from evaluators.engine import Decision, PolicyEngine
from evaluators.fairness import summarise, variants
from evaluators.findings import Action
from evaluators.models import shared_model
from evaluators.policy import LoadedPolicy, PolicyStore, load_policy_dir
from evaluators.settings import apply_torch_threads, evaluator_settings
from workers.check_batching import check_batcher
from workers.drift import annotate_jobs
from workers.generation import DecodeRequest, GenerationOutput, GeneratorOptions, get_generator
from workers.settings import WorkerSettings, worker_settings
from workers.stream_guard import start_guard
from workers.tracing import set_attributes, span

log = logging.getLogger(__name__)


def worker_policies() -> PolicyStore:
    """The policies of ``ASSAY_POLICY_DIR``, loaded once per process (in the model registry)."""
    folder = evaluator_settings().policy_dir
    return shared_model(f"policies:{folder}", lambda: PolicyStore(load_policy_dir(folder)))


def engine_for(name: str) -> PolicyEngine:
    """The policy's engine, built (models loaded) once per worker process, on first use."""
    lp = worker_policies().get(name)
    return shared_model(f"engine:{lp.name}:{lp.sha256}", lambda: PolicyEngine.build(lp))


def _stage(decisions: list[Decision]) -> StageResult:
    """One stage's decisions over the job's texts: strongest action, triggered findings, top scores."""
    scores: dict[str, float] = {}
    engines: dict[str, str] = {}
    for d in decisions:
        for k, v in d.scores().items():
            if v >= scores.get(k, -1.0):
                scores[k] = v
                engines[k] = d.engines()[k]
    return StageResult(
        action=Action.strongest([d.action for d in decisions]),
        findings=tuple(FindingRecord.of(f) for d in decisions for f in d.triggered),
        scores=scores,
        engines=engines,
        errors=tuple(CheckErrorRecord.of(e) for d in decisions for e in d.errors),
    )


def generator_options(settings: WorkerSettings) -> GeneratorOptions:
    # ASSAY_DEVICE is one setting, the evaluators': the generator runs where the checks run.
    options = GeneratorOptions.from_settings(settings)
    return dataclasses.replace(options, device=evaluator_settings().device)


def guarded_generation(job: GenerationJob, settings: WorkerSettings | None = None) -> JobResult:
    """Run one generation job end to end and return its result."""
    if job.fairness is not None:
        return fairness_generation(job, settings)
    return guarded_batch([job], settings)[0]


def fairness_generation(job: GenerationJob, settings: WorkerSettings | None = None) -> JobResult:
    """Generate the job's counterfactual group variants in one batch and score the gaps."""
    started = time.time()
    lp = worker_policies().get(job.policy)
    jobs, groups, dimension = variants(job, lp.policy.fairness.samples_per_group)
    results = guarded_batch(jobs, settings)
    summary = summarise(results, groups, lp.policy.fairness, dimension)
    return JobResult(
        policy=PolicyIdentity(**lp.identity()),
        params=job.params,
        action=Action.strongest([r.action for r in results] + [summary.action]),
        output=None,
        fairness=summary,
        variants=tuple(
            FairnessVariant(
                group=g,
                action=r.action,
                output=r.output,
                scores=r.output_checks.scores if r.output_checks else {},
                findings=r.findings,
            )
            for g, r in zip(groups, results, strict=True)
        ),
        usage=Usage(
            prompt_tokens=sum(r.usage.prompt_tokens for r in results),
            completion_tokens=sum(r.usage.completion_tokens for r in results),
        ),
        timings={"total_ms": round((time.time() - started) * 1000, 1)},
        model=results[0].model,
    )


def self_consistency_samples(engine: PolicyEngine) -> int:
    """Extra samples the output checks need (a self-consistency hallucination check), else 0."""
    for config in engine.configs("output"):
        if (
            getattr(config, "check", None) == "hallucination"
            and getattr(config, "mode", "") == "self_consistency"
        ):
            return int(config.samples)
    return 0


def guarded_batch(jobs: list[GenerationJob], settings: WorkerSettings | None = None) -> list[JobResult]:
    """Run generation jobs of one policy together: one batch per check, one batched decode.

    A job's ``context`` (grounding documents) goes to the output checks.
    """
    settings = settings or worker_settings()
    if not jobs:
        return []
    started = time.time()
    names = {j.policy for j in jobs}
    if len(names) != 1:
        raise ValueError(f"guarded_batch takes one policy at a time, got {sorted(names)}")
    lp: LoadedPolicy = worker_policies().get(names.pop())
    identity = PolicyIdentity(**lp.identity())
    engine = engine_for(lp.name)

    # Input checks: every user text of every job in one batch.
    texts_per_job = [j.user_texts() for j in jobs]
    flat = [t for texts in texts_per_job for t in texts]
    t0 = time.perf_counter()
    # Through the process's batcher: concurrent jobs' texts share one pass through the checks.
    flat_decisions = check_batcher(lp, engine, "input").evaluate(flat)
    input_ms = round((time.perf_counter() - t0) * 1000, 1)
    decisions_per_job: list[list[Decision]] = []
    offset = 0
    for texts in texts_per_job:
        decisions_per_job.append(flat_decisions[offset : offset + len(texts)])
        offset += len(texts)

    results: list[JobResult | None] = [None] * len(jobs)
    inputs: list[StageResult] = []
    timings: list[dict[str, float]] = []
    to_generate: list[int] = []
    for i, job in enumerate(jobs):
        timing: dict[str, float] = {"input_checks_ms": input_ms}
        if job.enqueued_at:
            timing["queue_ms"] = round(max(0.0, started - job.enqueued_at) * 1000, 1)
        timings.append(timing)
        inputs.append(_stage(decisions_per_job[i]))
        if inputs[i].action == Action.BLOCK:
            # Never generate from a blocked prompt.
            timing["total_ms"] = round((time.time() - started) * 1000, 1)
            results[i] = JobResult(
                policy=identity,
                params=job.params,
                action=Action.BLOCK,
                output=None,
                blocked_stage="input",
                input=inputs[i],
                findings=inputs[i].findings,
                model=ModelInfo(id=job.model),
                timings=timing,
            )
        else:
            to_generate.append(i)
    if not to_generate:
        return annotate_jobs(lp, jobs, decisions_per_job, {}, [r for r in results if r is not None])

    # Generation: submit every job at once so the batching generator decodes them together.
    futures: dict[int, Future[GenerationOutput]] = {}
    sample_futures: dict[int, Future[GenerationOutput]] = {}
    generators = {}
    # Streaming jobs: their text is published as it passes the output checks (stream_guard).
    guards = {i: g for i in to_generate if (g := start_guard(jobs[i], engine, settings)) is not None}
    k = self_consistency_samples(engine)
    for i in to_generate:
        job = jobs[i]
        # A redacted prompt is generated from its redacted form.
        prompt = job.with_user_texts([d.text or "" for d in decisions_per_job[i]])
        generator = get_generator(job.model, generator_options(settings), evaluator_settings().model_dir)
        generators[i] = generator
        guard = guards.get(i)
        futures[i] = generator.submit(
            DecodeRequest(
                prompt=prompt.prompt,
                messages=prompt.messages,
                params=job.params,
                on_text=guard.on_text if guard else None,
                cancel=guard.cancel if guard else None,
            )
        )
        if k:
            # Self-consistency: k extra sampled answers per job, decoded in the same batches.
            sampled = job.params.model_copy(update={"temperature": max(0.7, job.params.temperature)})
            sample_futures[i] = generator.submit(
                DecodeRequest(
                    prompt=prompt.prompt, messages=prompt.messages, params=sampled, num_return_sequences=k
                )
            )
    limit = settings.job_time_limit_s
    # The wait for the batched decode of this call's prompts: token counts and batch rows, no text.
    models = ",".join(sorted({jobs[i].model for i in to_generate}))
    batch: dict[str, str | int] = {
        "assay.policy": lp.name,
        "gen_ai.request.model": models,
        "assay.generation.jobs": len(to_generate),
    }
    with span("assay.generation", batch) as generation:
        try:
            outputs = {
                i: guards[i].follow(futures[i], limit) if i in guards else futures[i].result(timeout=limit)
                for i in to_generate
            }
        except BaseException:
            for guard in guards.values():
                guard.abort()
            raise
        samples = {i: f.result(timeout=settings.job_time_limit_s).samples for i, f in sample_futures.items()}
        set_attributes(
            generation,
            {
                "gen_ai.usage.input_tokens": sum(o.prompt_tokens for o in outputs.values()),
                "gen_ai.usage.output_tokens": sum(o.completion_tokens for o in outputs.values()),
                "assay.generation.batch_rows": max(o.batch_rows for o in outputs.values()),
            },
        )

    # Output checks: all outputs in one batch, with their grounding context.
    t0 = time.perf_counter()
    contexts = [tuple(jobs[i].context or ()) for i in to_generate]
    out_decisions = check_batcher(lp, engine, "output").evaluate(
        [outputs[i].text for i in to_generate],
        contexts=contexts if any(contexts) else None,
        extras=[{"samples": samples[i]} for i in to_generate] if samples else None,
    )
    output_ms = round((time.perf_counter() - t0) * 1000, 1)
    checked: dict[int, tuple[str, Decision]] = {}
    for i, decision in zip(to_generate, out_decisions, strict=True):
        out = outputs[i]
        if i in guards:
            decision = guards[i].finish(decision, out)
        checked[i] = (out.text, decision)
        output_stage = _stage([decision])
        timing = timings[i]
        timing.update(
            generate_ms=round(out.generate_ms, 1),
            generate_queue_ms=round(out.queue_ms, 1),
            output_checks_ms=output_ms,
            total_ms=round((time.time() - started) * 1000, 1),
        )
        results[i] = JobResult(
            policy=identity,
            params=jobs[i].params,
            action=decision.action,
            output=decision.text,
            finish_reason=out.finish_reason,
            blocked_stage="output" if decision.action is Action.BLOCK else None,
            input=inputs[i],
            output_checks=output_stage,
            findings=inputs[i].findings + output_stage.findings,
            usage=Usage(prompt_tokens=out.prompt_tokens, completion_tokens=out.completion_tokens),
            model=ModelInfo.model_validate(generators[i].info()),
            timings=timing,
            batch_rows=out.batch_rows,
            raw_output=out.text if lp.policy.generation.return_raw_output else None,
        )
    # Drift: one event per stage of each job; each result says how unusual its output is.
    return annotate_jobs(lp, jobs, decisions_per_job, checked, [r for r in results if r is not None])


def warm_up(settings: WorkerSettings | None = None) -> None:
    """Build every policy's engine and load the default generator; failures are logged, not fatal."""
    settings = settings or worker_settings()
    started = time.perf_counter()
    # Every core for torch's intra-op pool, now that idle OpenMP threads spin only
    # briefly (evaluators/runtime.py). Measured on 2 cores (bench/generate.py, 16 queued
    # jobs of 64 tokens): 105-109 tokens/s with 2 threads against 82-91 with 1; one job
    # alone 17-18 against 18-19. Half the cores paid only under OMP_WAIT_POLICY=PASSIVE
    # (65 against 54). ASSAY_TORCH_THREADS overrides it.
    threads = apply_torch_threads()
    log.info("torch uses %d threads", threads)
    try:
        for lp in worker_policies():
            engine_for(lp.name)
        get_generator(settings.default_model, generator_options(settings), evaluator_settings().model_dir)
    except Exception:
        # The first job will raise the same error and record it on the job.
        log.exception("warm-up failed")
        return
    log.info("warm-up done in %.1f s", time.perf_counter() - started)
