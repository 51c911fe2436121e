"""Continuous batching on a tiny random Llama: rows join a running batch, leave when done, and
each computes what it would alone."""

from __future__ import annotations

import time
from concurrent.futures import Future

import pytest
import torch

from evaluators import models
from evaluators.errors import InputError
from tests.unit.test_generation_batching import PROMPTS, req, solo, tiny_model, tiny_tokenizer
from workers.generation import (
    BatchingGenerator,
    ContinuousBatcher,
    DecodeRequest,
    GenerationOutput,
    Generator,
    GeneratorOptions,
    get_generator,
)
from workers.generation.running import RunningBatch
from workers.generation.sampling import Sampler


@pytest.fixture(scope="module")
def gen() -> Generator:
    return Generator.from_model(tiny_model(), tiny_tokenizer(), model_id="tiny")


def _wait_for(predicate: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)


def test_a_request_joins_mid_decode_and_leaves_before_the_long_one(gen: Generator) -> None:
    long, short = req(PROMPTS[2], max_new_tokens=100), req(PROMPTS[1], max_new_tokens=3)
    expected = [solo(gen, long).text, solo(gen, short).text]
    with ContinuousBatcher(gen) as front:
        first = front.submit(long)
        _wait_for(lambda: front.steps >= 10)
        second = front.submit(short)
        out = second.result(timeout=20)
        assert not first.done()  # the short one did not wait for the long one
        assert [first.result(timeout=20).text, out.text] == expected
    assert front.calls == 2 and out.batch_rows == 2 and out.completion_tokens == 3


def test_every_row_decodes_as_it_would_alone_whatever_joins(gen: Generator) -> None:
    # Greedy, seeded sampling and a repetition penalty, joining at different steps.
    requests = [
        req(PROMPTS[0], max_new_tokens=30),
        req(PROMPTS[2], temperature=0.9, top_k=8, top_p=0.9, seed=7, max_new_tokens=25),
        req(PROMPTS[1], repetition_penalty=1.5, max_new_tokens=20),
        req(PROMPTS[2], num_return_sequences=2, temperature=1.0, seed=3, max_new_tokens=12),
    ]
    expected = [solo(gen, r).samples for r in requests]
    futures: list[Future[GenerationOutput]] = []
    with ContinuousBatcher(gen) as front:
        for r in requests:
            futures.append(front.submit(r))
            _wait_for(lambda: front.steps >= 3 * len(futures))
        outs = [f.result(timeout=20) for f in futures]
    assert [o.samples for o in outs] == expected
    assert front.calls == len(requests)  # each joined on its own
    assert max(o.batch_rows for o in outs) >= 3


def test_max_batch_size_caps_rows_and_the_rest_wait_their_turn(gen: Generator) -> None:
    requests = [req(p, max_new_tokens=n) for p, n in zip(PROMPTS * 3, range(4, 13), strict=True)]
    expected = [solo(gen, r).text for r in requests]
    with ContinuousBatcher(gen, max_batch_size=3) as front:
        outs = front.generate(requests)
    assert [o.text for o in outs] == expected
    assert max(o.batch_rows for o in outs) == 3
    assert outs[-1].queue_ms > 0


def test_a_bad_prompt_fails_alone(gen: Generator) -> None:
    too_long = DecodeRequest(prompt="the " * 200)
    with ContinuousBatcher(gen) as front:
        futures = [front.submit(r) for r in (req(PROMPTS[0]), too_long, req(PROMPTS[1]))]
        assert isinstance(futures[1].exception(timeout=20), InputError)
        assert [futures[0].result(timeout=20).text, futures[2].result(timeout=20).text] == [
            solo(gen, req(PROMPTS[0])).text,
            solo(gen, req(PROMPTS[1])).text,
        ]


def test_a_failing_step_fails_the_batch_and_the_next_request_still_runs(
    gen: Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = RunningBatch.step
    calls = {"n": 0}

    def flaky(self: RunningBatch) -> list[object]:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("device lost")
        return original(self)  # type: ignore[return-value]

    monkeypatch.setattr(RunningBatch, "step", flaky)
    with ContinuousBatcher(gen) as front:
        doomed = [front.submit(req(p)) for p in PROMPTS]
        assert all(isinstance(f.exception(timeout=20), RuntimeError) for f in doomed)
        later = front.submit(req(PROMPTS[0])).result(timeout=20)
    assert later.text == solo(gen, req(PROMPTS[0])).text


def test_close_serves_what_is_queued_then_refuses(gen: Generator) -> None:
    front = ContinuousBatcher(gen)
    futures = [front.submit(req(p, max_new_tokens=4)) for p in PROMPTS]
    front.close()
    assert all(f.result(timeout=0).completion_tokens == 4 for f in futures)
    with pytest.raises(RuntimeError, match="closed"):
        front.submit(req(PROMPTS[0]))


def test_columns_of_rows_that_left_are_cut(gen: Generator) -> None:
    batch = gen.running_batch()
    long_prompt, short_prompt = (
        gen.rows_for(req(PROMPTS[2], max_new_tokens=2))[0],
        gen.rows_for(req(PROMPTS[0], max_new_tokens=8))[0],
    )
    batch.admit(long_prompt + short_prompt)
    widths = []
    while len(batch):
        batch.step()
        widths.append(batch.width)
    # The 11-token prompt leaves after 2 tokens; the 1-token row then attends to its own columns.
    assert widths[1] <= len(short_prompt[0].prompt_ids) + 2 < widths[0]


def test_sampler_extend_pads_a_missing_penalty_with_one() -> None:
    rows_a = Generator.from_model(tiny_model(), tiny_tokenizer()).rows_for(req(PROMPTS[0]))[0]
    rows_b = Generator.from_model(tiny_model(), tiny_tokenizer()).rows_for(
        req(PROMPTS[1], repetition_penalty=2.0)
    )[0]
    a, b = Sampler.build(rows_a, 60, torch.device("cpu")), Sampler.build(rows_b, 60, torch.device("cpu"))
    both = a.extend(b)
    assert both.penalty is not None and both.seen is not None
    assert both.penalty.tolist() == [1.0, 2.0] and both.seen.shape == (2, 60)
    assert not both.seen[0].any() and both.seen[1].any()


def test_the_worker_gets_continuous_batching_unless_the_step_is_compiled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(Generator, "load", lambda self: self)
    # A registry of its own: swapped, not cleared, so a session-wide app keeps its models.
    monkeypatch.setattr(models, "_REGISTRY", models.ModelRegistry())
    eager, compiled = get_generator("m"), get_generator("m", GeneratorOptions(compile=True))
    assert type(eager) is ContinuousBatcher and type(compiled) is BatchingGenerator
    assert eager.info()["batching"]["mode"] == "continuous"
