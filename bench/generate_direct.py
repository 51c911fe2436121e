"""Generation throughput: BatchingGenerator against a naive model.generate loop.

Part 1 sends 1, 8 and 16 concurrent requests (one thread each, as Celery's
threads pool would) of exactly ``--new-tokens`` tokens (EOS ignored) through one
BatchingGenerator, and serves the same prompts with ``model.generate`` once per
prompt on the same loaded model. Part 2 measures each switch on its own
(attention kernel, int8, bf16, pruning finished rows, torch.compile with
``--compile``), each on a fresh model load.

    .venv/bin/python bench/generate_direct.py            # ~3-5 min on 2 CPU cores
    .venv/bin/python bench/generate_direct.py --quick    # smaller, for a smoke run

Figures are wall-clock on whatever else the machine is doing; run it twice.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from evaluators.contracts import SamplingParams
from workers.generation import BatchingGenerator, DecodeRequest, Generator, GeneratorOptions

PROMPTS = [
    "What is the capital of France?",
    "Write a short poem about autumn leaves.",
    "Explain photosynthesis to a ten-year-old.",
    "Give me three tips for learning a new language.",
    "What are the main causes of climate change?",
    "Describe a sunset over the ocean.",
    "How does a bicycle stay upright?",
    "Summarize the plot of Romeo and Juliet.",
    "Why is the sky blue?",
    "List five fruits that are rich in vitamin C.",
    "What is the difference between weather and climate?",
    "Write a haiku about a cat.",
    "How do vaccines work?",
    "Suggest a name for a friendly robot.",
    "What is a prime number?",
    "Tell me a fun fact about octopuses.",
]


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def concurrent_batched(front: BatchingGenerator, requests: list[DecodeRequest]) -> int:
    """One thread per request, released together; returns completion tokens."""
    barrier = threading.Barrier(len(requests))
    tokens = [0] * len(requests)

    def job(i: int) -> None:
        barrier.wait()
        tokens[i] = front.submit(requests[i]).result().completion_tokens

    threads = [threading.Thread(target=job, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(tokens)


def naive_loop(gen: Generator, requests: list[DecodeRequest], new_tokens: int) -> int:
    """``model.generate`` once per prompt, greedy, exactly ``new_tokens`` each."""
    total = 0
    for request in requests:
        ids = torch.tensor([gen.encode(request)])
        model: Any = gen.model
        with torch.inference_mode():
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                do_sample=False,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                pad_token_id=gen.tokenizer.pad_token_id,
            )
        total += out.shape[1] - ids.shape[1]
    return total


def requests_for(n: int, params: SamplingParams) -> list[DecodeRequest]:
    """``n`` prompts decoded for exactly ``max_new_tokens`` each (EOS ignored)."""
    return [DecodeRequest(prompt=PROMPTS[i % len(PROMPTS)], params=params, ignore_eos=True) for i in range(n)]


def part_batching(gen: Generator, levels: list[int], new_tokens: int) -> list[dict[str, Any]]:
    params = SamplingParams(temperature=0, max_new_tokens=new_tokens)
    rows = []
    with BatchingGenerator(gen, batch_wait_ms=5) as front:
        concurrent_batched(front, requests_for(2, params.model_copy(update={"max_new_tokens": 4})))  # warm-up
        for n in levels:
            requests = requests_for(n, params)
            b_s, b_tokens = timed(partial(concurrent_batched, front, requests))
            n_s, n_tokens = timed(partial(naive_loop, gen, requests, new_tokens))
            assert b_tokens == n_tokens == n * new_tokens, (b_tokens, n_tokens)
            row = {
                "concurrency": n,
                "tokens": b_tokens,
                "batched_s": round(b_s, 2),
                "batched_tok_s": round(b_tokens / b_s, 1),
                "naive_s": round(n_s, 2),
                "naive_tok_s": round(n_tokens / n_s, 1),
                "speedup": round(n_s / b_s, 2),
            }
            rows.append(row)
            print(
                f"{n:>11} {b_tokens:>7} {row['batched_tok_s']:>14} {row['naive_tok_s']:>12} "
                f"{row['speedup']:>7}x",
                flush=True,
            )
    return rows


def measure(options: GeneratorOptions, model_id: str, batch: int, new_tokens: int) -> dict[str, Any]:
    """Load with ``options``; time one batch and one single request of ``new_tokens`` each."""
    load_s, gen = timed(lambda: Generator(model_id, options).load())
    params = SamplingParams(temperature=0, max_new_tokens=new_tokens)
    if options.compile:
        # Compile happens on first use and again per new shape: warm up both shapes
        # so the timed runs measure the compiled code, not the compiler.
        gen.generate(requests_for(1, params))
        gen.generate(requests_for(batch, params))
    else:
        gen.generate(requests_for(1, params.model_copy(update={"max_new_tokens": 2})))
    single_s, _ = timed(lambda: gen.generate(requests_for(1, params)))
    batch_s, outs = timed(lambda: gen.generate(requests_for(batch, params)))
    tokens = sum(o.completion_tokens for o in outs)
    greedy = gen.generate([DecodeRequest(prompt=PROMPTS[0], params=params)])
    return {
        "load_s": round(load_s, 1),
        "single_tok_s": round(new_tokens / single_s, 1),
        f"batch{batch}_tok_s": round(tokens / batch_s, 1),
        "paris": "Paris" in greedy[0].text,
    }


def measure_pruning(gen: Generator, batch: int, new_tokens: int) -> dict[str, Any]:
    """Rows of very different lengths: is dropping finished rows from the KV cache worth it?"""
    steps = [max(1, new_tokens * (i + 1) // batch) for i in range(batch)]
    requests = [
        DecodeRequest(
            prompt=PROMPTS[i % len(PROMPTS)],
            params=SamplingParams(temperature=0, max_new_tokens=n),
            ignore_eos=True,
        )
        for i, n in enumerate(steps)
    ]
    result = {}
    for prune in (True, False):
        variant = Generator.from_model(gen.model, gen.tokenizer, GeneratorOptions(prune_finished=prune))
        variant.generate(requests[:1])
        seconds, outs = timed(partial(variant.generate, requests))
        result["prune" if prune else "keep"] = round(sum(o.completion_tokens for o in outs) / seconds, 1)
    return result


def main() -> None:
    from evaluators.runtime import configure_process

    configure_process()  # offline, before any model library is imported
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--levels", default="1,8,16", help="concurrency levels")
    parser.add_argument("--switch-batch", type=int, default=8)
    parser.add_argument("--switch-tokens", type=int, default=32)
    parser.add_argument("--no-switches", action="store_true", help="skip part 2")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (slow)")
    parser.add_argument("--quick", action="store_true", help="levels 1,4; 16 tokens")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch default)")
    args = parser.parse_args()
    if args.threads:
        # On a shared, busy machine one thread can beat two: OpenMP barriers stall
        # whenever another process holds the second core.
        torch.set_num_threads(args.threads)
    if args.quick:
        args.levels, args.new_tokens, args.switch_tokens, args.switch_batch = "1,4", 16, 8, 4

    levels = [int(x) for x in args.levels.split(",")]
    started = time.perf_counter()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load {os.getloadavg()}")
    gen = Generator(args.model, GeneratorOptions()).load()
    print(f"model {gen.info()['id']} {gen.info()['source']} on {gen.info()['device']}")
    print(f"\nPart 1: {args.new_tokens} new tokens per request, greedy, EOS ignored")
    print(f"{'concurrency':>11} {'tokens':>7} {'batched tok/s':>14} {'naive tok/s':>12} {'ratio':>8}")
    report: dict[str, Any] = {"batching": part_batching(gen, levels, args.new_tokens)}

    if not args.no_switches:
        b, n = args.switch_batch, args.switch_tokens
        print(f"\nPart 2: one switch at a time; batch of {b} and a single request, {n} tokens each")
        variants: dict[str, GeneratorOptions] = {
            "baseline (fp32, sdpa)": GeneratorOptions(),
            "attn eager": GeneratorOptions(attn_implementation="eager"),
            "int8 dynamic": GeneratorOptions(quantize_int8=True),
            "bf16": GeneratorOptions(dtype="bf16"),
        }
        if args.compile:
            variants["compile (static cache)"] = GeneratorOptions(compile=True)
        print(f"{'variant':<24} {'load s':>7} {'1 row tok/s':>12} {f'{b} rows tok/s':>14} {'Paris':>6}")
        switches = {}
        for name, options in variants.items():
            try:
                row = measure(options, args.model, b, n)
            except Exception as exc:  # a switch that fails here is a finding, not a crash
                print(f"{name:<24} failed: {type(exc).__name__}: {exc}")
                switches[name] = {"error": f"{type(exc).__name__}: {exc}"}
                continue
            switches[name] = row
            print(
                f"{name:<24} {row['load_s']:>7} {row['single_tok_s']:>12} "
                f"{row[f'batch{b}_tok_s']:>14} {'yes' if row['paris'] else 'NO':>6}",
                flush=True,
            )
        pruning = measure_pruning(gen, b, args.new_tokens)
        print(
            f"{'prune finished rows':<24} mixed lengths: prune {pruning['prune']} tok/s, "
            f"keep {pruning['keep']} tok/s"
        )
        report["switches"] = switches
        report["pruning"] = pruning

    report["total_s"] = round(time.perf_counter() - started, 1)
    report["model"] = gen.info()
    print(f"\ntotal {report['total_s']} s, load {os.getloadavg()}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
