"""Where ``/v1/moderate``'s CPU goes per text, in process: each check, each stage of the PII
check, and the drift embedding, at batch 1 (one client) and batch 32 (a full micro-batch).

    .venv/bin/python bench/moderate_profile.py [--policy default] [--batches 1,32] [--rounds 20]
        [--cprofile 25]

Texts are bench/moderate.py's. Times are medians over rounds, per text (milliseconds); set
ASSAY_ONNX=false to see torch instead of ONNX Runtime. ``--cprofile N`` also prints the N
functions with the most cumulative time at each batch size.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from moderate import texts as bench_texts


def _timed(fn: Callable[[], Any], rounds: int) -> float:
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1000


def profile_batch(
    engine: Any, bound: list[Any], stage: Any, batch: list[str], rounds: int
) -> dict[str, float]:
    """Median milliseconds per batch: the whole engine, each check, and their parts."""
    from evaluators.checks.base import CheckInput
    from evaluators.checks.pii import PiiCheck
    from evaluators.checks.pii_recognizers import split_words
    from evaluators.checks.pii_view import pii_view
    from evaluators.checks.toxicity import ToxicityCheck
    from evaluators.drift.embedding import embed
    from evaluators.normalize import normalize

    engine.evaluate(batch, stage)  # warm-up: first calls allocate
    rows = {"engine.evaluate (all checks)": _timed(lambda: engine.evaluate(batch, stage), rounds)}
    normalized = [normalize(t) for t in batch]
    rows["  normalize"] = _timed(lambda: [normalize(t) for t in batch], rounds)
    inputs = [CheckInput(normalized=n, stage=stage) for n in normalized]
    for b in bound:
        check = b.check
        rows[f"  {check.name}"] = _timed(lambda check=check: check.evaluate(inputs), rounds)
        if isinstance(check, PiiCheck):
            views = [pii_view(n).text for n in normalized]
            analyzer = check._analyzer
            rows["    pii_view"] = _timed(lambda: [pii_view(n) for n in normalized], rounds)
            rows["    spaCy (nlp.pipe)"] = _timed(
                lambda analyzer=analyzer, views=views: list(
                    analyzer.nlp_engine.process_batch(views, language="en", batch_size=64)
                ),
                rounds,
            )
            taggers = [r for r in analyzer.registry.recognizers if hasattr(r, "prepare")]
            if taggers:
                rec = taggers[0]

                def tag(rec: Any = rec, views: list[str] = views) -> None:
                    rec.prepare(views)
                    rec.release()

                rows["    ner-minilm tagger (MiniLM + head)"] = _timed(tag, rounds)
                probabilities = rec._batch._probabilities
                words = [[w for w, _, _ in split_words(v)] for v in views]
                rows["      of which the probabilities call"] = _timed(
                    lambda f=probabilities, words=words: f(words), rounds
                )
        if isinstance(check, ToxicityCheck) and check._classifier is not None:
            folded = [n.folded for n in normalized]
            rows["    abuse classifier (MiniLM)"] = _timed(
                lambda check=check, folded=folded: check._classify(folded), rounds
            )
            profanity = check._profanity
            if profanity is not None:
                rows["    profanity tier"] = _timed(lambda f=profanity, folded=folded: f(folded), rounds)
    rows["drift embedding (deferred, recorder thread)"] = _timed(lambda: embed(batch), rounds)
    return rows


def main() -> int:
    from evaluators.runtime import configure_process

    configure_process()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--policy", default="default")
    parser.add_argument("--stage", default="input", choices=["input", "output"])
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--cprofile", type=int, default=0, help="print the top N cumulative functions")
    args = parser.parse_args()

    from evaluators.drift.embedding import embed
    from evaluators.engine import PolicyEngine
    from evaluators.policy import load_policy_dir
    from evaluators.settings import apply_torch_threads, evaluator_settings

    threads = apply_torch_threads()
    policies = load_policy_dir(evaluator_settings().policy_dir)
    engine = PolicyEngine.build(policies[args.policy])
    bound = engine._stages[args.stage]
    print(
        f"policy {args.policy} ({args.stage}): {', '.join(engine.checks(args.stage))}; "
        f"torch threads {threads}; ASSAY_ONNX={evaluator_settings().onnx}"
    )
    embed(["warm up"])
    for size in [int(b) for b in args.batches.split(",")]:
        batch = bench_texts(size, seed=size)
        rows = profile_batch(engine, bound, args.stage, batch, args.rounds)
        print(f"\nbatch {size}: ms per batch / per text")
        for name, ms in rows.items():
            print(f"  {name:<48} {ms:>9.2f} {ms / size:>9.2f}")
        if args.cprofile:
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(max(1, args.rounds // 2)):
                engine.evaluate(batch, args.stage)
            prof.disable()
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(args.cprofile)
            print(out.getvalue())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
