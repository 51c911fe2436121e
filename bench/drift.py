"""Benchmark drift: ingestion through the real recording path, one report, and the inline cost.

1. Ingestion: N synthetic events (default 1,000,000: seven calm days, then a day with more toxic
   outputs) through ``DriftRecorder.record`` -> the recorder thread -> ``DriftStore.write`` (per-hour
   sketches, one transaction per batch) into SQLite, with 1 producer thread and with several. The
   naive way, in the same run: one row per event (JSON), inserted in the same batch sizes.
2. One report over everything ingested (7 days of baseline, 1 day of window), from the sketches;
   the naive way rescans the raw rows of its (smaller) table and builds the same report from them.
3. Inline cost: the default policy's checks on 1 and 16 texts, and what drift adds (MiniLM
   embedding, profile lookup, recording) in the same thread.

The producer never waits on the store; it only pauses while the buffer is 80% full, so the rate
measured is what the writer thread sustains (record() itself is timed separately).

    .venv/bin/python bench/drift.py [--events 1000000] [--naive-events 100000] [--clients 4] [--json out.json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from devstack.drift_traffic import LABELS, random_pool  # noqa: E402
from evaluators.contracts.drift import DriftEvent, TimeRange  # noqa: E402
from evaluators.drift.config import DriftPolicy  # noqa: E402
from evaluators.drift.recorder import DriftRecorder  # noqa: E402
from evaluators.drift.report import build_report  # noqa: E402
from evaluators.drift.sketch import Sketch, merge  # noqa: E402
from evaluators.findings import Action  # noqa: E402
from evaluators.runtime import configure_process  # noqa: E402

DAY0 = dt.datetime(2026, 5, 4, tzinfo=dt.UTC)
BASELINE = TimeRange.of(DAY0, DAY0 + dt.timedelta(days=7))
WINDOW = TimeRange.of(DAY0 + dt.timedelta(days=7), DAY0 + dt.timedelta(days=8))


def make_events(n: int, seed: int = 0) -> list[DriftEvent]:
    """``n`` events over eight days, half inputs and half outputs; day 8's outputs are 4x as often toxic.

    Built with ``model_construct`` from shared score and embedding objects, so a million of them fit
    in memory and building them is not what is measured.
    """
    rng = np.random.default_rng(seed)
    vectors = [tuple(float(x) for x in v) for v in random_pool(2000, seed=seed)]
    calm = [
        dict(zip((f"toxicity.{k}" for k in LABELS), rng.beta(1, 300, 6).round(6).tolist(), strict=True))
        for _ in range(500)
    ]
    toxic = []
    for s in calm[:250]:
        t = dict(s)
        t["toxicity.toxicity"], t["toxicity.insult"] = float(rng.beta(6, 2)), float(rng.beta(5, 3))
        toxic.append(t)
    span = (WINDOW.end - BASELINE.start).total_seconds()
    offsets = np.sort(rng.uniform(0, span, n))
    window_start = (WINDOW.start - BASELINE.start).total_seconds()
    picks = rng.integers(0, 2000, n)
    score_picks = rng.integers(0, 250, n)
    lengths = rng.lognormal(4.4, 0.6, n).astype(int) + 1
    toxic_draw = rng.random(n)
    entity = rng.random(n)
    events = []
    construct = DriftEvent.model_construct
    for i in range(n):
        stage = "output" if i % 2 else "input"
        is_toxic = toxic_draw[i] < (0.2 if (stage == "output" and offsets[i] >= window_start) else 0.05)
        events.append(
            construct(
                at=BASELINE.start + dt.timedelta(seconds=float(offsets[i])),
                policy="default",
                policy_sha256="a" * 64,
                model="smollm2",
                stage=stage,
                source="generation",
                run_id="",
                action=Action.FLAG if is_toxic else (Action.REDACT if entity[i] < 0.15 else Action.ALLOW),
                scores=toxic[score_picks[i]] if is_toxic else calm[score_picks[i]],
                entities={"PERSON": 1} if entity[i] < 0.15 else {},
                length=int(lengths[i]),
                embedding=vectors[picks[i]],
            )
        )
    return events


def _in_threads(produce: Any, clients: int) -> None:
    """Run ``produce(k)`` for k in 0..clients-1 in threads, and wait for them all."""
    threads = [threading.Thread(target=produce, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def ingest(url: str, events: list[DriftEvent], clients: int) -> dict[str, float]:
    """Events through record() from ``clients`` threads until every one is acknowledged."""
    from store.db import database
    from store.drift import DriftStore

    store = DriftStore(database(url), seed=0)
    recorder = DriftRecorder(store.write, capacity=50_000, batch=2_000, interval_s=0.5)
    in_record = [0.0] * clients
    chunk = 100

    def produce(k: int) -> None:
        mine = events[k::clients]
        for i in range(0, len(mine), chunk):
            while recorder.stats().pending > 0.8 * recorder.capacity:
                time.sleep(0.001)
            t = time.perf_counter()
            recorder.record(mine[i : i + chunk])
            in_record[k] += time.perf_counter() - t

    started = time.perf_counter()
    _in_threads(produce, clients)
    ok = recorder.flush(timeout=3600)
    wall = time.perf_counter() - started
    stats = recorder.stats()
    recorder.close()
    assert ok and stats.acknowledged == len(events) and stats.dropped == 0, stats
    return {
        "events": len(events),
        "clients": clients,
        "seconds": wall,
        "events_per_s": len(events) / wall,
        "record_us_per_event": sum(in_record) / len(events) * 1e6,
    }


def naive_ingest(url: str, events: list[DriftEvent], clients: int) -> dict[str, float]:
    """The naive way: one JSON row per event, INSERTed in batches of 2,000 per transaction."""
    from sqlalchemy import JSON, Column, DateTime, Integer, MetaData, String, Table, create_engine, insert

    engine = create_engine(url, connect_args={"timeout": 60})
    meta = MetaData()
    table = Table(
        "naive_events", meta,
        Column("id", Integer, primary_key=True), Column("at", DateTime(timezone=True), index=True),
        Column("policy", String(64)), Column("stage", String(8)), Column("event", JSON),
    )  # fmt: skip
    meta.create_all(engine)

    def produce(k: int) -> None:
        mine = events[k::clients]
        for i in range(0, len(mine), 2000):
            rows = [
                {"at": e.at, "policy": e.policy, "stage": e.stage, "event": e.model_dump(mode="json")}
                for e in mine[i : i + 2000]
            ]
            with engine.begin() as c:
                c.execute(insert(table), rows)

    started = time.perf_counter()
    _in_threads(produce, clients)
    wall = time.perf_counter() - started
    engine.dispose()
    return {"events": len(events), "clients": clients, "seconds": wall, "events_per_s": len(events) / wall}


def report(url: str) -> dict[str, Any]:
    from store.db import database
    from store.drift import DriftStore

    store = DriftStore(database(url))
    started = time.perf_counter()
    base = store.sketches("default", window=BASELINE)
    cur = store.sketches("default", window=WINDOW)
    read = time.perf_counter() - started
    r = build_report(
        report_id="bench", policy_name="default", policy=DriftPolicy(), baseline=base, window=cur,
        baseline_info=BASELINE.wire(), window_info=WINDOW.wire(),
    )  # fmt: skip
    total = time.perf_counter() - started
    events = sum(m.count for m in base.values()) + sum(m.count for m in cur.values())
    return {
        "events": events,
        "seconds": total,
        "read_s": read,
        "verdict": r.verdict,
        "drifted": list(r.drifted),
    }


def naive_report(url: str) -> dict[str, Any]:
    """Rescan every raw row of both windows and build the same report from them."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    started = time.perf_counter()
    sides = []
    for window in (BASELINE, WINDOW):
        sketches = {"input": Sketch(), "output": Sketch()}
        rng = np.random.default_rng(0)
        with engine.connect() as c:
            rows = c.execute(
                text("select event from naive_events where at >= :a and at < :b"),
                {"a": window.start.replace(tzinfo=None), "b": window.end.replace(tzinfo=None)},
            )
            batch: dict[str, list[DriftEvent]] = {"input": [], "output": []}
            for (raw,) in rows:
                e = DriftEvent.model_validate_json(raw)
                batch[e.stage].append(e)
                if len(batch[e.stage]) >= 5000:
                    sketches[e.stage].add(batch[e.stage], rng)
                    batch[e.stage] = []
            for stage, rest in batch.items():
                sketches[stage].add(rest, rng)
        sides.append({k: merge([v]) for k, v in sketches.items()})
    r = build_report(
        report_id="naive", policy_name="default", policy=DriftPolicy(), baseline=sides[0], window=sides[1],
        baseline_info={}, window_info={},
    )  # fmt: skip
    engine.dispose()
    events = sum(m.count for side in sides for m in side.values())
    return {"events": events, "seconds": time.perf_counter() - started, "verdict": r.verdict}


def inline_cost(url: str, repeats: int) -> dict[str, Any]:
    """Milliseconds of the default policy's checks, and of drift on top, per call of 1 and 16 texts."""
    from evaluators.drift.profile import build_profile
    from evaluators.drift.recorder import DriftRecorder
    from evaluators.drift.runtime import DriftRuntime, ProfileCache, observe_decisions
    from evaluators.engine import PolicyEngine
    from evaluators.policy import load_policy_file
    from evaluators.settings import apply_torch_threads
    from store.db import database
    from store.drift import DriftStore

    apply_torch_threads()
    lp = load_policy_file(ROOT / "policies" / "default.yaml")
    engine = PolicyEngine.build(lp)
    store = DriftStore(database(url))
    profile = build_profile("bench", store.sketches("default", window=BASELINE))
    runtime = DriftRuntime(DriftRecorder(store.write), ProfileCache(lambda _lp, _m: profile))
    runtime.warm_up([lp])
    texts = [
        "Hi Dana, thanks for reaching out about order 4411. We will ship it by Friday, call 212-555-0101 if needed.",
        "The quarterly report shows revenue up 12 percent; the team in Denver did great work this season.",
        "Please send the invoice 7781 to ap@example.com before the end of the month so finance can close the books.",
        "I really enjoyed the workshop on gardening; the examples were clear and the pace was just right.",
    ]
    no_embed = lp.__class__(
        policy=lp.policy.model_copy(update={"drift": lp.policy.drift.model_copy(update={"embed": False})}),
        path=lp.path, sha256=lp.sha256, source=lp.source, data=lp.data,
    )  # fmt: skip
    out: dict[str, Any] = {}
    for size in (1, 16):
        batch = [texts[i % len(texts)] + f" ({i})" for i in range(size)]
        checks, drift, lean = [], [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            decisions = engine.evaluate(batch, "output")
            t1 = time.perf_counter()
            items = [
                observe_decisions([t], [d], "output", "moderation")
                for t, d in zip(batch, decisions, strict=True)
            ]
            scores = runtime.observe(lp, items)
            t2 = time.perf_counter()
            unembedded = runtime.observe(no_embed, items)
            t3 = time.perf_counter()
            assert all(s.status == "scored" and s.novelty is not None for s in scores)
            assert all(s.status == "scored" and s.novelty is None for s in unembedded)
            checks.append((t1 - t0) * 1000)
            drift.append((t2 - t1) * 1000)
            lean.append((t3 - t2) * 1000)
        c, d, e = statistics.median(checks), statistics.median(drift), statistics.median(lean)
        out[f"batch_{size}"] = {"checks_ms": c, "drift_ms": d, "drift_share": d / (c + d), "no_embed_ms": e}
    runtime.close()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--naive-events", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per inline batch size")
    parser.add_argument("--skip-inline", action="store_true", help="skip the inline cost (loads the models)")
    parser.add_argument("--json", help="also write results here")
    args = parser.parse_args()
    configure_process()
    folder = Path(tempfile.mkdtemp(prefix="assay-bench-drift-"))
    results: dict[str, Any] = {}

    t = time.perf_counter()
    events = make_events(args.events)
    print(
        f"built {len(events):,} synthetic events in {time.perf_counter() - t:.1f} s (not timed below)",
        flush=True,
    )
    sketch_url = f"sqlite:///{folder / 'sketches.db'}"
    results["ingest_1"] = ingest(sketch_url, events, 1)
    many = events[: args.naive_events * 2]
    results[f"ingest_{args.clients}"] = ingest(f"sqlite:///{folder / 'sketches-many.db'}", many, args.clients)
    naive_url = f"sqlite:///{folder / 'naive.db'}"
    naive = events[:: max(1, len(events) // args.naive_events)][: args.naive_events]
    results["naive_1"] = naive_ingest(naive_url, naive, 1)
    results[f"naive_{args.clients}"] = naive_ingest(
        f"sqlite:///{folder / 'naive-many.db'}", naive, args.clients
    )
    results["report"] = report(sketch_url)
    results["naive_report"] = naive_report(naive_url)
    if not args.skip_inline:
        results["inline"] = inline_cost(sketch_url, args.repeats)

    for k in ("ingest_1", f"ingest_{args.clients}", "naive_1", f"naive_{args.clients}"):
        r = results[k]
        extra = f", record() {r['record_us_per_event']:.2f} us/event" if "record_us_per_event" in r else ""
        print(
            f"{k:>9}: {r['events']:>9,} events from {r['clients']} client(s) in {r['seconds']:7.1f} s = {r['events_per_s']:9,.0f} events/s{extra}"
        )
    for n in (1, args.clients):
        print(
            f"ingestion ratio, {n} client(s): sketches / naive rows = {results[f'ingest_{n}']['events_per_s'] / results[f'naive_{n}']['events_per_s']:.2f}x"
        )
    rep, nrep = results["report"], results["naive_report"]
    print(
        f"report over {rep['events']:,} events: {rep['seconds']:.2f} s (reading sketches {rep['read_s']:.2f} s); verdict {rep['verdict']}: {', '.join(rep['drifted'])}"
    )
    print(
        f"naive report over {nrep['events']:,} raw rows: {nrep['seconds']:.2f} s = {nrep['seconds'] / nrep['events'] * 1e6:.1f} us/event (x{rep['events'] / nrep['events']:.0f} events: ~{nrep['seconds'] * rep['events'] / nrep['events']:.0f} s)"
    )
    for size, r in results.get("inline", {}).items():
        print(
            f"inline {size}: checks {r['checks_ms']:.1f} ms, drift {r['drift_ms']:.1f} ms ({r['drift_share']:.0%} of the call); "
            f"drift with embed: false {r['no_embed_ms']:.2f} ms"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
