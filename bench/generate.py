"""Benchmark generation jobs through the queue against the naive loop, in one run.

Assay's way: HTTP API -> Redis -> one Celery worker process (threads pool),
whose concurrent jobs share batched decoding. The naive way: a loop calling
``model.generate`` once per prompt, model loaded once, in this process.
Both generate 64 new tokens per prompt with greedy decoding from the same
converted SmolLM2; throughput counts the tokens actually generated.

    .venv/bin/python bench/generate.py [--levels 1,8,16] [--tokens 64]

Needs Redis at 127.0.0.1:6379 or a redis-server binary (started on a free port).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from devstack.redis import free_port, running_redis  # noqa: E402
from evaluators.runtime import configure_process  # noqa: E402
from workers.embedded import worker_command  # noqa: E402

PROMPTS = [
    "Describe the water cycle in detail.",
    "Explain how a bicycle works, step by step.",
    "Write a short story about a lighthouse keeper.",
    "List ten facts about the Moon and explain each one.",
    "Explain why the sky is blue to a curious child.",
    "Describe a typical day in the life of a baker.",
    "Give advice to someone starting to learn the piano.",
    "Explain the rules of chess for a beginner.",
]


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def naive(levels: list[int], tokens: int) -> dict[int, dict[str, float]]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evaluators.settings import evaluator_settings
    from workers.generation import resolve_model

    path = resolve_model("smollm2", evaluator_settings().model_dir).path
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    out: dict[int, dict[str, float]] = {}
    for n in levels:
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(n)]
        latencies, generated = [], 0
        started = time.perf_counter()
        for p in prompts:
            ids = tok.apply_chat_template(
                [{"role": "user", "content": p}],
                add_generation_prompt=True,
                return_tensors="pt",
                return_dict=True,
            )
            t0 = time.perf_counter()
            with torch.inference_mode():
                seq = model.generate(
                    **ids, max_new_tokens=tokens, do_sample=False, pad_token_id=tok.eos_token_id
                )
            # A naive loop's job i waits for every job before it.
            latencies.append(time.perf_counter() - started)
            generated += int(seq.shape[1] - ids["input_ids"].shape[1])
            del t0
        wall = time.perf_counter() - started
        out[n] = {
            "tokens_per_s": generated / wall,
            "p50_s": statistics.median(latencies),
            "p99_s": percentile(latencies, 0.99),
            "tokens": generated,
        }
    return out


def through_queue(levels: list[int], tokens: int, redis_url: str) -> dict[int, dict[str, float]]:
    data = Path(tempfile.mkdtemp(prefix="assay-bench-gen-"))
    port = free_port()
    queue = f"bench-{os.getpid()}"
    env = {
        **os.environ,
        "ASSAY_BROKER_URL": redis_url,
        "ASSAY_DATA_DIR": str(data),
        "ASSAY_DATABASE_URL": f"sqlite:///{data / 'assay.db'}",
        "ASSAY_DEFAULT_QUEUE": queue,
        "ASSAY_PORT": str(port),
        "ASSAY_LOG_LEVEL": "WARNING",
    }
    worker = subprocess.Popen(
        worker_command([queue], concurrency=16, hostname=f"bench-{os.getpid()}@%h"),
        env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    api = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve"], env=env, cwd=ROOT,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("API not ready")
            time.sleep(0.5)

        def job(prompt: str) -> tuple[float, int]:
            t0 = time.perf_counter()
            body = {"prompt": prompt, "params": {"temperature": 0, "max_new_tokens": tokens}}
            r = httpx.post(base + "/v1/generations?wait=120", json=body, timeout=180)
            r.raise_for_status()
            res = r.json()
            if res["status"] != "succeeded":
                raise RuntimeError(res)
            return time.perf_counter() - t0, int(res["result"]["usage"]["completion_tokens"])

        job(PROMPTS[0])  # warm-up: worker loads its models
        out: dict[int, dict[str, float]] = {}
        for n in levels:
            prompts = [PROMPTS[i % len(PROMPTS)] for i in range(n)]
            started = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(n) as pool:
                results = list(pool.map(job, prompts))
            wall = time.perf_counter() - started
            latencies = [r[0] for r in results]
            generated = sum(r[1] for r in results)
            out[n] = {
                "tokens_per_s": generated / wall,
                "p50_s": statistics.median(latencies),
                "p99_s": percentile(latencies, 0.99),
                "tokens": generated,
            }
        return out
    finally:
        for p in (api, worker):
            p.terminate()
            p.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--levels", default="1,8,16")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--json", help="also write results here")
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    # Offline, before transformers loads here or in the processes started below.
    configure_process()

    with running_redis() as redis_url:
        queued = through_queue(levels, args.tokens, redis_url)
    loop = naive(levels, args.tokens)
    print(f"{'jobs':>5} {'way':>7} {'tok/s':>8} {'p50 s':>7} {'p99 s':>7} {'tokens':>7}")
    report: dict[str, Any] = {}
    for n in levels:
        for name, res in (("naive", loop[n]), ("assay", queued[n])):
            r = res
            print(
                f"{n:>5} {name:>7} {r['tokens_per_s']:>8.1f} {r['p50_s']:>7.2f} {r['p99_s']:>7.2f} {int(r['tokens']):>7}"
            )
        ratio = queued[n]["tokens_per_s"] / loop[n]["tokens_per_s"]
        print(f"{n:>5} {'ratio':>7} {ratio:>7.2f}x")
        report[str(n)] = {"naive": loop[n], "assay": queued[n], "ratio": ratio}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
