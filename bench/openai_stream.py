"""Streaming against non-streaming through the OpenAI-compatible endpoint, in one run.

Both ways send the same greedy chat completions with the real ``openai`` SDK
to a real stack (API -> Redis or the embedded file channel -> one Celery
worker -> SmolLM2 -> the default policy's checks). Non-streaming, the client
sees its first word when the whole answer is done; streaming, when the first
window of words passed the output checks. Reported per level of concurrent
clients: time to first token (TTFT: the first text the client sees), the gap
between streamed pieces (inter-token latency per piece, and per token), total
time, and the ratios streaming / non-streaming.

    .venv/bin/python bench/openai_stream.py [--levels 1,4] [--requests 6] [--tokens 64] [--embedded]

Needs Redis at 127.0.0.1:6379 or a redis-server binary (started on a free port), unless --embedded.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import itertools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import openai  # noqa: E402

from devstack.redis import running_redis  # noqa: E402
from devstack.stack import start_stack  # noqa: E402

PROMPTS = [
    "Describe the water cycle in detail.",
    "Explain how a bicycle works, step by step.",
    "Write a short story about a lighthouse keeper.",
    "Explain why the sky is blue to a curious child.",
    "Describe a typical day in the life of a baker.",
    "Give advice to someone starting to learn the piano.",
]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def one(client: openai.OpenAI, prompt: str, tokens: int, stream: bool) -> dict[str, float]:
    body: dict[str, Any] = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": prompt}],
        "temperature": 0,
        "max_tokens": tokens,
    }
    started = time.perf_counter()
    if not stream:
        r = client.chat.completions.create(**body)
        done = time.perf_counter() - started
        assert r.usage is not None
        return {"ttft": done, "total": done, "tokens": r.usage.completion_tokens, "pieces": 1, "gap": 0.0}
    arrivals: list[float] = []
    usage = 0
    for chunk in client.chat.completions.create(**body, stream=True, stream_options={"include_usage": True}):
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.perf_counter() - started)
        if chunk.usage is not None:
            usage = chunk.usage.completion_tokens
    total = time.perf_counter() - started
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    return {
        "ttft": arrivals[0] if arrivals else total,
        "total": total,
        "tokens": usage,
        "pieces": len(arrivals),
        "gap": median(gaps),
        "per_token": (arrivals[-1] - arrivals[0]) / max(1, usage - 1) if arrivals else float("nan"),
    }


def level(client: openai.OpenAI, clients: int, requests: int, tokens: int, stream: bool) -> dict[str, float]:
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(requests * clients)]
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        rows = list(pool.map(lambda p: one(client, p, tokens, stream), prompts))
    wall = time.perf_counter() - started
    out = {key: median([r[key] for r in rows if key in r]) for key in rows[0]}
    out["tokens_per_s"] = sum(r["tokens"] for r in rows) / wall
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--levels", default="1,4", help="concurrent clients, comma-separated")
    parser.add_argument("--requests", type=int, default=6, help="requests per client and way")
    parser.add_argument("--tokens", type=int, default=64, help="max_tokens per request")
    parser.add_argument("--embedded", action="store_true", help="make run's set-up: no Redis, file channel")
    parser.add_argument("--json", help="also write results here")
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]

    report: dict[str, Any] = {
        "tokens": args.tokens,
        "channel": "file" if args.embedded else "redis",
        "levels": {},
    }
    with tempfile.TemporaryDirectory(prefix="assay-bench-") as tmp, running_redis() as redis_url:
        stack = start_stack("" if args.embedded else redis_url, Path(tmp), workers=0 if args.embedded else 1)
        try:
            client = openai.OpenAI(
                base_url=stack.base_url + "/v1", api_key="unused", timeout=600, max_retries=0
            )
            one(client, PROMPTS[0], 8, stream=True)  # warm-up: models loaded, first shapes seen
            one(client, PROMPTS[0], 8, stream=False)
            for n in levels:
                plain = level(client, n, args.requests, args.tokens, stream=False)
                streamed = level(client, n, args.requests, args.tokens, stream=True)
                report["levels"][n] = {"non_streaming": plain, "streaming": streamed}
        finally:
            stack.close()

    print(f"channel: {report['channel']}, max_tokens {args.tokens}, greedy, default policy (medians)")
    print(
        f"{'clients':>7} {'way':>10} {'TTFT s':>8} {'total s':>8} {'pieces':>7} {'gap ms':>7} {'ms/tok':>7} {'tok/s':>7}"
    )
    for n, row in report["levels"].items():
        for way in ("non_streaming", "streaming"):
            r = row[way]
            per_token = r.get("per_token", float("nan")) * 1000
            print(
                f"{n:>7} {way.replace('_streaming', '-stream'):>10} {r['ttft']:>8.3f} {r['total']:>8.3f} "
                f"{r['pieces']:>7.0f} {r['gap'] * 1000:>7.1f} {per_token:>7.1f} {r['tokens_per_s']:>7.1f}"
            )
        ttft = row["streaming"]["ttft"] / row["non_streaming"]["ttft"]
        total = row["streaming"]["total"] / row["non_streaming"]["total"]
        print(f"{n:>7} {'ratio':>10} TTFT {ttft:.2f}x of non-streaming; total time {total:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
