"""The guarded generation pipeline: input checks -> generate -> output checks.

Called by the thin Celery task. A blocked prompt is never generated; a
redacted prompt is generated from its redacted form; the output is filtered
by the policy's output checks before anyone sees it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from functools import lru_cache
from typing import Any

from evaluators.engine import Decision, PolicyEngine
from evaluators.findings import Action
from evaluators.policy import LoadedPolicy, PolicyStore, load_policy_dir
from evaluators.settings import apply_torch_threads, evaluator_settings
from workers.generation import DecodeRequest, GeneratorOptions, get_generator, sampling_params
from workers.params import resolve_params
from workers.settings import WorkerSettings, worker_settings

log = logging.getLogger(__name__)

_engines: dict[str, PolicyEngine] = {}
_engines_lock = threading.Lock()


@lru_cache(maxsize=1)
def worker_policies() -> PolicyStore:
    return PolicyStore(load_policy_dir(evaluator_settings().policy_dir))


def engine_for(name: str) -> PolicyEngine:
    """The policy's engine, built (models loaded) once per worker process, on first use."""
    with _engines_lock:
        if name not in _engines:
            _engines[name] = PolicyEngine.build(worker_policies().get(name))
        return _engines[name]


def user_texts(payload: dict[str, Any]) -> list[str]:
    """The parts of a request a person wrote: the prompt, or the user messages."""
    if payload.get("prompt") is not None:
        return [str(payload["prompt"])]
    return [str(m.get("content", "")) for m in payload.get("messages") or [] if m.get("role") == "user"]


def _redacted_request(
    payload: dict[str, Any], decisions: list[Decision]
) -> tuple[str | None, list[dict[str, str]] | None]:
    texts = [d.text or "" for d in decisions]
    if payload.get("prompt") is not None:
        return texts[0], None
    messages: list[dict[str, str]] = []
    it = iter(texts)
    for m in payload["messages"]:
        content = next(it) if m.get("role") == "user" else str(m.get("content", ""))
        messages.append({"role": str(m["role"]), "content": content})
    return None, messages


def _stage_block(decisions: list[Decision]) -> dict[str, Any]:
    findings = [f.to_dict() for d in decisions for f in d.triggered]
    scores: dict[str, float] = {}
    engines: dict[str, str] = {}
    for d in decisions:
        for k, v in d.scores().items():
            if v >= scores.get(k, -1.0):
                scores[k] = v
                engines[k] = d.engines()[k]
    return {
        "action": Action.strongest([d.action for d in decisions]).value,
        "findings": findings,
        "scores": scores,
        "engines": engines,
        "errors": [e.to_dict() for d in decisions for e in d.errors],
    }


def generator_options(settings: WorkerSettings) -> GeneratorOptions:
    # ASSAY_DEVICE is one setting, the evaluators': the generator runs where the checks run.
    options = GeneratorOptions.from_settings(settings)
    return dataclasses.replace(options, device=evaluator_settings().device)


def guarded_generation(payload: dict[str, Any], settings: WorkerSettings | None = None) -> dict[str, Any]:
    """Run one generation job end to end and return its result record."""
    if payload.get("fairness"):
        return fairness_generation(payload, settings)
    return guarded_batch([payload], settings)[0]


def fairness_generation(payload: dict[str, Any], settings: WorkerSettings | None = None) -> dict[str, Any]:
    """Generate the job's counterfactual group variants in one batch and score the gaps."""
    from workers.fairness import expand, summarise

    started = time.time()
    lp = worker_policies().get(payload["policy"])
    variants, groups, dimension = expand(payload, lp)
    results = guarded_batch(variants, settings)
    summary = summarise(results, groups, lp)
    summary["dimension"] = dimension
    actions = [Action(r["action"]) for r in results] + [Action(summary["action"])]
    return {
        "policy": lp.identity(),
        "params": results[0]["params"],
        "action": Action.strongest(actions).value,
        "output": None,
        "fairness": summary,
        "variants": [
            {
                "group": g,
                "action": r["action"],
                "output": r.get("output"),
                "scores": (r.get("output_checks") or {}).get("scores", {}),
                "findings": r.get("findings", []),
            }
            for g, r in zip(groups, results, strict=True)
        ],
        "usage": {
            "prompt_tokens": sum(r["usage"]["prompt_tokens"] for r in results),
            "completion_tokens": sum(r["usage"]["completion_tokens"] for r in results),
        },
        "timings": {"total_ms": round((time.time() - started) * 1000, 1)},
        "model": results[0].get("model", {"id": payload["model"]}),
    }


def self_consistency_samples(engine: PolicyEngine) -> int:
    """Extra samples the output checks need (a self-consistency hallucination check), else 0."""
    for config in engine.configs("output"):
        if (
            getattr(config, "check", None) == "hallucination"
            and getattr(config, "mode", "") == "self_consistency"
        ):
            return int(config.samples)
    return 0


def guarded_batch(
    payloads: list[dict[str, Any]], settings: WorkerSettings | None = None
) -> list[dict[str, Any]]:
    """Run generation jobs of one policy together: one batch per check, one batched decode.

    Each payload has ``policy``, ``model``, ``prompt`` or ``messages``,
    ``params``, and optionally ``context`` (grounding documents for the
    output checks) and ``enqueued_at``.
    """
    settings = settings or worker_settings()
    if not payloads:
        return []
    started = time.time()
    names = {p["policy"] for p in payloads}
    if len(names) != 1:
        raise ValueError(f"guarded_batch takes one policy at a time, got {sorted(names)}")
    lp: LoadedPolicy = worker_policies().get(names.pop())
    engine = engine_for(lp.name)
    params = [resolve_params(lp.policy, p.get("params")) for p in payloads]

    # Input checks: every user text of every job in one batch.
    texts_per_job = [user_texts(p) for p in payloads]
    flat = [t for texts in texts_per_job for t in texts]
    t0 = time.perf_counter()
    flat_decisions = engine.evaluate(flat, "input") if flat else []
    input_ms = round((time.perf_counter() - t0) * 1000, 1)
    decisions_per_job: list[list[Decision]] = []
    offset = 0
    for texts in texts_per_job:
        decisions_per_job.append(flat_decisions[offset : offset + len(texts)])
        offset += len(texts)

    results: list[dict[str, Any]] = []
    to_generate: list[int] = []
    for i, payload in enumerate(payloads):
        timings: dict[str, float] = {"input_checks_ms": input_ms}
        if payload.get("enqueued_at"):
            timings["queue_ms"] = round(max(0.0, started - float(payload["enqueued_at"])) * 1000, 1)
        input_block = _stage_block(decisions_per_job[i])
        result: dict[str, Any] = {
            "policy": lp.identity(),
            "params": params[i],
            "input": input_block,
            "timings": timings,
        }
        if input_block["action"] == Action.BLOCK.value:
            # Never generate from a blocked prompt.
            result.update(
                action=Action.BLOCK.value,
                output=None,
                blocked_stage="input",
                findings=input_block["findings"],
                usage={"prompt_tokens": 0, "completion_tokens": 0},
                model={"id": payload["model"]},
            )
            timings["total_ms"] = round((time.time() - started) * 1000, 1)
        else:
            to_generate.append(i)
        results.append(result)
    if not to_generate:
        return results

    # Generation: submit every job at once so the batching generator decodes them together.
    futures = {}
    generators = {}
    for i in to_generate:
        payload = payloads[i]
        prompt, messages = _redacted_request(payload, decisions_per_job[i])
        sampling = sampling_params(params[i])
        generator = get_generator(
            payload["model"], generator_options(settings), evaluator_settings().model_dir
        )
        generators[i] = generator
        futures[i] = generator.submit(DecodeRequest(prompt=prompt, messages=messages, params=sampling))
    # Self-consistency: k extra sampled answers per job, decoded in the same batches.
    k = self_consistency_samples(engine)
    sample_futures = {}
    if k:
        for i in to_generate:
            base = params[i]
            sampled = sampling_params({**base, "temperature": max(0.7, float(base["temperature"]))})
            prompt, messages = _redacted_request(payloads[i], decisions_per_job[i])
            sample_futures[i] = generators[i].submit(
                DecodeRequest(prompt=prompt, messages=messages, params=sampled, num_return_sequences=k)
            )
    outputs = {i: futures[i].result(timeout=settings.job_time_limit_s) for i in to_generate}
    samples = {i: f.result(timeout=settings.job_time_limit_s).samples for i, f in sample_futures.items()}

    # Output checks: all outputs in one batch, with their grounding context.
    t0 = time.perf_counter()
    contexts = [tuple(payloads[i].get("context") or ()) for i in to_generate]
    out_decisions = engine.evaluate(
        [outputs[i].text for i in to_generate],
        "output",
        contexts=contexts if any(contexts) else None,
        extras=[{"samples": samples[i]} for i in to_generate] if samples else None,
    )
    output_ms = round((time.perf_counter() - t0) * 1000, 1)
    for i, decision in zip(to_generate, out_decisions, strict=True):
        out = outputs[i]
        result = results[i]
        output_block = _stage_block([decision])
        timings = result["timings"]
        timings.update(
            generate_ms=round(out.generate_ms, 1),
            generate_queue_ms=round(out.queue_ms, 1),
            output_checks_ms=output_ms,
            total_ms=round((time.time() - started) * 1000, 1),
        )
        result.update(
            action=decision.action.value,
            output=decision.text,
            finish_reason=out.finish_reason,
            output_checks=output_block,
            findings=result["input"]["findings"] + output_block["findings"],
            usage={"prompt_tokens": out.prompt_tokens, "completion_tokens": out.completion_tokens},
            model=generators[i].info(),
            batch_rows=out.batch_rows,
        )
        if lp.policy.generation.return_raw_output:
            result["raw_output"] = out.text
    return results


def warm_up(settings: WorkerSettings | None = None) -> None:
    """Build every policy's engine and load the default generator; failures are logged, not fatal."""
    settings = settings or worker_settings()
    started = time.perf_counter()
    # A worker decodes and runs checks in other threads at the same time: half
    # the cores for torch's intra-op pool keeps them from fighting (measured on
    # 2 cores: 16 queued jobs went from 54 to 65 tokens/s with 1 thread).
    threads = apply_torch_threads(default=max(1, (os.cpu_count() or 2) // 2))
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
