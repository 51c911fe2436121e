"""Streaming on the real SmolLM2: text as it is decoded, cancelling, the sliding-window guard, channels."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import pytest

from evaluators.contracts import SamplingParams, StreamEvent
from evaluators.engine import PolicyEngine
from evaluators.findings import Action, Finding, Span
from evaluators.policy import load_policy_file
from workers.generation import BatchingGenerator, DecodeRequest, Generator
from workers.settings import WorkerSettings
from workers.stream_guard import StreamGuard, redact_tail
from workers.streams import stream_reader, stream_writer

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
FRANCE = "What is the capital of France?"
STORY = "Write a long story about a dragon who learns to cook."


@pytest.fixture(scope="module")
def smollm() -> Generator:
    model_dir = Path(os.environ.get("ASSAY_MODEL_DIR") or ROOT / ".cache" / "models")
    return Generator("smollm2", cache_dir=model_dir).load()


@pytest.fixture(scope="module")
def guard_engine() -> PolicyEngine:
    return PolicyEngine.build(load_policy_file(ROOT / "tests" / "fixtures" / "policies" / "guard.yaml"))


def greedy(max_new_tokens: int, **kw: object) -> SamplingParams:
    return SamplingParams(temperature=0, max_new_tokens=max_new_tokens, **kw)  # type: ignore[arg-type]


def test_pieces_arrive_as_whole_words_and_add_up_to_the_output(smollm: Generator) -> None:
    pieces: list[str] = []
    plain, streamed = smollm.generate(
        [
            DecodeRequest(prompt=FRANCE, params=greedy(24)),
            DecodeRequest(prompt=FRANCE, params=greedy(24), on_text=pieces.append),
        ]
    )
    # Streaming one row of a batch changes nothing about either row's text.
    assert streamed.text == plain.text and "Paris" in streamed.text
    assert "".join(pieces) == streamed.text
    assert len(pieces) > 3
    assert all(p[:1] in {" ", "\n"} for p in pieces[1:-1])  # each piece after the first starts a word


def test_no_piece_carries_what_a_stop_sequence_cuts(smollm: Generator) -> None:
    pieces: list[str] = []
    (out,) = smollm.generate(
        [DecodeRequest(prompt=FRANCE, params=greedy(24, stop=("Paris",)), on_text=pieces.append)]
    )
    assert out.finish_reason == "stop_sequence"
    assert "".join(pieces) == out.text and "Paris" not in out.text
    assert not any("Par" in p for p in pieces)


def test_cancel_stops_the_row_and_spares_its_neighbour(smollm: Generator) -> None:
    cancel = threading.Event()
    pieces: list[str] = []

    def on_text(piece: str) -> None:
        pieces.append(piece)
        if len(pieces) == 3:
            cancel.set()

    story = greedy(200, seed=1)
    cut, whole = smollm.generate(
        [
            DecodeRequest(prompt=STORY, params=story, on_text=on_text, cancel=cancel),
            DecodeRequest(prompt=STORY, params=greedy(40)),
        ]
    )
    assert cut.finish_reason == "cancelled"
    assert cut.completion_tokens < 40 < 200
    assert whole.completion_tokens == 40 and whole.finish_reason == "length"
    assert "".join(pieces) == cut.text


# --------------------------------------------------------------------------- the guard


class _Recorder:
    """A writer that keeps events, and fails loudly on a publish after close."""

    def __init__(self) -> None:
        self.events: list[StreamEvent] = []
        self.closed = False

    def publish(self, event: StreamEvent) -> None:
        if self.closed:
            raise AssertionError(f"published after close: {event}")
        self.events.append(event)

    def close(self) -> None:
        self.closed = True


def _run_guard(
    smollm: Generator, engine: PolicyEngine, prompt: str, params: SamplingParams
) -> tuple[StreamGuard, _Recorder, str]:
    writer = _Recorder()
    # Every new word gets its window: the block is found by a window, whatever the timing
    # (with the default cadence, an answer this short may end before its second window).
    guard = StreamGuard("job1", engine, writer, window_chars=1, window_wait_s=0.0)
    with BatchingGenerator(smollm) as batching:
        future = batching.submit(
            DecodeRequest(prompt=prompt, params=params, on_text=guard.on_text, cancel=guard.cancel)
        )
        out = guard.follow(future, timeout=120)
    (decision,) = engine.evaluate([out.text], "output")
    final = guard.finish(decision, out)
    assert writer.closed
    return guard, writer, final.action.value


def test_guard_releases_checked_words_and_blocks_before_the_word(
    smollm: Generator, guard_engine: PolicyEngine
) -> None:
    guard, writer, action = _run_guard(smollm, guard_engine, FRANCE, greedy(48))
    assert action == "block" and guard.blocked is not None
    texts = [e.text for e in writer.events if e.kind == "text"]
    assert "Paris" not in "".join(texts)
    assert writer.events[-1] == StreamEvent(kind="end", finish_reason="content_filter")
    # Every released piece was inside a window the checks passed before it was published.
    assert guard.checks >= len(texts) + 1
    assert "".join(texts) == guard.text[: guard.released]


def test_guard_passes_a_clean_answer_whole(smollm: Generator, guard_engine: PolicyEngine) -> None:
    guard, writer, action = _run_guard(smollm, guard_engine, "Name three colours.", greedy(24))
    assert action == "allow" and guard.blocked is None
    assert "".join(e.text for e in writer.events if e.kind == "text") == guard.text
    assert writer.events[-1].kind == "end" and writer.events[-1].finish_reason in {"stop", "length"}


def test_redaction_applies_to_the_unreleased_part_only() -> None:
    text = "Mail jane@x.com or bob@y.org now"
    email = Finding("pii", "EMAIL_ADDRESS", 1.0, 0.5, True, Action.REDACT, "presidio", Span(5, 15))
    late = Finding("pii", "EMAIL_ADDRESS", 1.0, 0.5, True, Action.REDACT, "presidio", Span(19, 28))
    flagged = Finding("toxicity", "insult", 0.9, 0.5, True, Action.FLAG, "detoxify", Span(0, 4))
    assert redact_tail(text, 0, [email, late, flagged]) == "Mail <EMAIL_ADDRESS> or <EMAIL_ADDRESS> now"
    assert redact_tail(text, 16, [email, late]) == "or <EMAIL_ADDRESS> now"
    # A span that began in released text is redacted from the boundary on.
    assert redact_tail(text, 10, [email]) == "<EMAIL_ADDRESS> or bob@y.org now"
    assert redact_tail(text, 29, [email, late]) == "now"


# --------------------------------------------------------------------------- the channels


def _round_trip(settings: WorkerSettings) -> list[StreamEvent]:
    events = [
        StreamEvent(kind="text", text="Hello"),
        StreamEvent(kind="text", text=" wörld ✓"),
        StreamEvent(kind="end", finish_reason="stop"),
    ]
    writer = stream_writer(settings, "abc123")

    async def read() -> list[StreamEvent]:
        reader = stream_reader(settings, "abc123")
        got: list[StreamEvent] = []
        assert await reader.read(timeout=0.05) == []  # nothing yet: waits, then answers empty
        writer.publish(events[0])
        got += await reader.read(timeout=2)
        for event in events[1:]:
            writer.publish(event)
        while len(got) < len(events):
            got += await reader.read(timeout=2)
        await reader.close()
        return got

    try:
        return asyncio.run(read())
    finally:
        writer.close()


def test_file_channel_round_trip(tmp_path: Path) -> None:
    settings = WorkerSettings(broker_url="", data_dir=tmp_path)
    assert _round_trip(settings)[1].text == " wörld ✓"
    assert not (tmp_path / "streams" / "abc123.jsonl").exists()  # the reader removed it


@pytest.mark.integration
def test_redis_channel_round_trip(redis_url: str) -> None:
    import redis

    settings = WorkerSettings(broker_url=redis_url)
    got = _round_trip(settings)
    assert [e.kind for e in got] == ["text", "text", "end"] and got[2].finish_reason == "stop"
    assert not redis.Redis.from_url(redis_url).exists("assay:stream:abc123")
