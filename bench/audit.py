"""Benchmark audit throughput: items per minute with one and with two workers.

A 200-item suite goes through the API -> Redis -> Celery workers -> SmolLM2
-> policy checks, once with one worker process and once with two; the
scaling ratio is items/min(two) / items/min(one). On a 2-core machine two
worker processes compete for the same cores, so expect little gain there;
the ratio is meaningful on machines with a core budget per worker.

    .venv/bin/python bench/audit.py [--items 200] [--tokens 32]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from devstack.redis import running_redis  # noqa: E402
from devstack.stack import start_stack  # noqa: E402
from evaluators.runtime import configure_process  # noqa: E402

TOPICS = ["rivers", "bread", "owls", "trains", "tea", "clouds", "chess", "bees", "glass", "maps",
          "volcanoes", "violins", "deserts", "kites", "coral", "comets", "bridges", "lanterns", "moss", "salt"]  # fmt: skip
ASKS = ["Say one short fact about {t}.", "Describe {t} in one sentence.", "Why do people like {t}?",
        "Give a tip about {t}.", "Write a haiku about {t}.", "What is surprising about {t}?",
        "Name a use of {t}.", "How are {t} made or formed?", "Compare {t} to something else.",
        "Tell a child about {t}."]  # fmt: skip


def suite(n: int) -> dict[str, Any]:
    items = [
        {
            "id": f"i{i}",
            "category": f"topic-{i % 5}",
            "prompt": ASKS[i % len(ASKS)].format(t=TOPICS[i % len(TOPICS)]),
        }
        for i in range(n)
    ]
    return {"name": "bench-audit", "version": "1", "items": items}


def run_once(redis_url: str, workers: int, n: int, tokens: int) -> dict[str, float]:
    data = Path(tempfile.mkdtemp(prefix=f"assay-bench-audit-{workers}-"))
    stack = start_stack(redis_url, data, workers=workers, extra_env={"ASSAY_LOG_LEVEL": "WARNING"})
    try:
        with stack.client() as c:
            # Warm-up: each worker loads its models before the clock starts.
            warm = {"suite": suite(2 * workers), "params": {"temperature": 0, "max_new_tokens": 4}}
            run_id = c.post("/v1/audits", json=warm).json()["id"]
            while c.get(f"/v1/audits/{run_id}").json()["status"] not in {"succeeded", "failed"}:
                time.sleep(0.5)
            body = {"suite": suite(n), "params": {"temperature": 0, "max_new_tokens": tokens}}
            started = time.perf_counter()
            run_id = c.post("/v1/audits", json=body).json()["id"]
            while True:
                status = c.get(f"/v1/audits/{run_id}").json()
                if status["status"] in {"succeeded", "failed", "cancelled"}:
                    break
                time.sleep(0.5)
            wall = time.perf_counter() - started
        if status["status"] != "succeeded":
            raise SystemExit(f"audit ended {status['status']}: {status.get('error')}")
        return {"workers": workers, "items": n, "seconds": wall, "items_per_min": n / wall * 60}
    finally:
        stack.close()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--json", help="also write results here")
    args = parser.parse_args()
    configure_process()  # offline, like every Assay entry point; the stack's processes inherit it
    with running_redis() as redis_url:
        one = run_once(redis_url, 1, args.items, args.tokens)
        two = run_once(redis_url, 2, args.items, args.tokens)
    ratio = two["items_per_min"] / one["items_per_min"]
    for r in (one, two):
        print(
            f"{r['workers']} worker(s): {r['items']} items in {r['seconds']:.1f} s = {r['items_per_min']:.1f} items/min"
        )
    print(f"scaling ratio (2 workers / 1 worker): {ratio:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"one": one, "two": two, "ratio": ratio}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
