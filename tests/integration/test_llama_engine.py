"""The llama.cpp engine on the real library and the real SmolLM2 GGUF, and through a real worker.

Runs where llama-cpp-python imports (``make llama-cpp``); skipped elsewhere, saying so. The
start-up failure without the library runs everywhere: a real worker process, with a
``llama_cpp`` that cannot be imported, must exit naming the install command.
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack.stack import Stack, StackError, start_stack
from evaluators.contracts import SamplingParams
from workers.generation import DecodeRequest, GeneratorOptions, resolve_model
from workers.generation.llama_engine import LlamaCppGenerator

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
# "What is the capital of France?" alone is a near tie at the first token ("The" 25.33 against "L"
# 25.24 in fp32), which llama.cpp's 4-bit arithmetic tips the other way; this wording is not.
FRANCE = "Which city is the capital of France?"
HAS_LLAMA = importlib.util.find_spec("llama_cpp") is not None
needs_llama = pytest.mark.skipif(
    not HAS_LLAMA, reason="llama-cpp-python is not installed here (optional extra: make llama-cpp)"
)


@pytest.fixture(scope="module")
def llama() -> LlamaCppGenerator:
    return LlamaCppGenerator("smollm2", GeneratorOptions(generator_engine="llama-cpp")).load()


def ask(gen: LlamaCppGenerator, prompt: str = FRANCE, **params: Any) -> Any:
    (out,) = gen.generate([DecodeRequest(prompt=prompt, params=SamplingParams(**params))])
    return out


@needs_llama
def test_greedy_answer_knows_paris(llama: LlamaCppGenerator) -> None:
    out = ask(llama, temperature=0, max_new_tokens=24)
    assert "Paris" in out.text and out.finish_reason in {"stop", "length"}
    info = llama.info()
    assert info["engine"] == "llama-cpp" and info["id"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert info["path"].endswith("SmolLM2-135M-Instruct.Q4_1.gguf")


@needs_llama
def test_prompt_tokens_match_the_transformers_engine(llama: LlamaCppGenerator) -> None:
    from transformers import AutoTokenizer

    folder = resolve_model("smollm2", Path(os.environ["ASSAY_MODEL_DIR"])).path
    tok = AutoTokenizer.from_pretrained(folder)
    messages = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Où est Genève?"},
    ]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    expected = tok(str(text), add_special_tokens=False)["input_ids"]
    assert llama.encode(DecodeRequest(messages=messages)) == expected
    plain = llama.encode(DecodeRequest(prompt="Hello there, world", raw_prompt=True))
    assert plain == tok("Hello there, world")["input_ids"]


@needs_llama
def test_stop_length_and_eos(llama: LlamaCppGenerator) -> None:
    out = ask(llama, temperature=0, max_new_tokens=48, stop=["Paris"])
    assert out.finish_reason == "stop_sequence" and "Paris" not in out.text
    assert ask(llama, temperature=0, max_new_tokens=5).completion_tokens == 5
    done = ask(llama, "Say only the word yes.", temperature=0, max_new_tokens=64)
    assert done.finish_reason == "stop" and done.completion_tokens < 64


@needs_llama
def test_seeds_reproduce_and_differ(llama: LlamaCppGenerator) -> None:
    hot = {"temperature": 1.2, "top_k": 0, "top_p": 1.0, "max_new_tokens": 24}
    prompt = "Write one sentence about the sea."
    a, b, c = (ask(llama, prompt, seed=s, **hot).text for s in (7, 7, 8))
    assert a == b and a != c
    two = DecodeRequest(prompt=prompt, params=SamplingParams(seed=7, **hot), num_return_sequences=2)
    (first,) = llama.generate([two])
    (again,) = llama.generate([two])
    # Sample i is seeded seed + i (the unit tests check the chains); the two decode in one batch,
    # whose arithmetic can tip a draw against decoding alone, but a call reproduces itself.
    assert first.samples == again.samples and first.samples[0] != first.samples[1]


@needs_llama
def test_sampling_parameters_change_the_output(llama: LlamaCppGenerator) -> None:
    prompt = "List three colours."
    plain = ask(llama, prompt, temperature=0, max_new_tokens=40).text
    penalised = ask(llama, prompt, temperature=0, max_new_tokens=40, repetition_penalty=1.8).text
    assert plain != penalised
    # top_k=1 and a tiny top_p each leave one candidate: greedy whatever the temperature.
    assert ask(llama, prompt, temperature=2.0, top_k=1, max_new_tokens=40, seed=1).text == plain
    assert ask(llama, prompt, temperature=2.0, top_p=0.0, top_k=0, max_new_tokens=40, seed=2).text == plain


@needs_llama
def test_streaming_and_concurrent_callers(llama: LlamaCppGenerator) -> None:
    pieces: list[str] = []
    req = DecodeRequest(
        prompt=FRANCE, params=SamplingParams(temperature=0, max_new_tokens=40), on_text=pieces.append
    )
    (out,) = llama.generate([req])
    assert "".join(pieces) == out.text and len(pieces) > 1
    # One Llama, many threads: served one at a time, each as it would be alone.
    outs: dict[int, str] = {}

    def call(i: int) -> None:
        outs[i] = ask(llama, temperature=0, max_new_tokens=12 + i).text

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [outs[i] for i in range(4)] == [
        ask(llama, temperature=0, max_new_tokens=12 + i).text for i in range(4)
    ]


# f16 weights (the default) measured 16 of 16 identical to the transformers engine, alone and in
# one batch of 16; the as-shipped Q4_1 kernels 9 of 16 alone, and in a batch only 5 of 16 kept
# their alone text. The gate leaves room for a near tie that another CPU's arithmetic tips.
F16_GATE = 14


@needs_llama
def test_f16_weights_give_the_transformers_text_alone_and_in_a_batch(llama: LlamaCppGenerator) -> None:
    from tests.integration.test_generator_model import GATE_PROMPTS
    from workers.generation import Generator

    assert llama.info()["dtype"] == "f16" and llama.info()["weights"].endswith(".f16.gguf")
    requests = [
        DecodeRequest(prompt=p, params=SamplingParams(temperature=0, max_new_tokens=32)) for p in GATE_PROMPTS
    ]
    reference = Generator("smollm2", GeneratorOptions(), Path(os.environ["ASSAY_MODEL_DIR"])).load()
    expected = [o.text for o in reference.generate(requests)]
    batched = llama.generate(requests)
    assert max(o.batch_rows for o in batched) == len(requests)  # one batch of 16 rows
    alone = [llama.generate([r])[0].text for r in requests]
    same_alone = sum(a == b for a, b in zip(alone, expected, strict=True))
    same_batched = sum(a.text == b for a, b in zip(batched, expected, strict=True))
    assert same_alone >= F16_GATE and same_batched >= F16_GATE, (same_alone, same_batched)


@pytest.fixture(scope="module")
def llama_stack(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    try:
        st = start_stack(
            redis_url,
            tmp_path_factory.mktemp("llama-stack"),
            extra_env={"ASSAY_GENERATOR_ENGINE": "llama-cpp"},
        )
    except StackError as exc:
        pytest.fail(str(exc))
    yield st
    st.close()


@needs_llama
def test_a_job_through_the_queue_runs_on_llama_cpp(llama_stack: Stack) -> None:
    with llama_stack.client() as c:
        body = {"prompt": FRANCE, "params": {"temperature": 0, "max_new_tokens": 32, "stop": ["."]}}
        r = c.post("/v1/generations?wait=120", json=body)
        assert r.status_code in (200, 202), r.text
        job = r.json()
    assert job["status"] == "succeeded", job
    result = job["result"]
    assert "Paris" in result["output"] and result["finish_reason"] == "stop_sequence"
    assert result["model"]["engine"] == "llama-cpp" and result["model"]["batching"]["mode"] == "continuous"
    assert result["usage"]["completion_tokens"] > 0


@needs_llama
def test_concurrent_jobs_share_decode_steps_on_llama_cpp(llama_stack: Stack) -> None:
    body = {"prompt": FRANCE, "params": {"temperature": 0, "max_new_tokens": 48}}

    def one(_: int) -> Any:
        with llama_stack.client() as c:
            r = c.post("/v1/generations?wait=120", json=body)
        assert r.status_code in (200, 202), r.text
        return r.json()

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        jobs = list(pool.map(one, range(6)))
    assert all(j["status"] == "succeeded" for j in jobs), jobs
    results = [j["result"] for j in jobs]
    # f16 weights: the same greedy text whichever jobs shared the batch.
    assert {r["output"] for r in results} == {results[0]["output"]} and "Paris" in results[0]["output"]
    assert max(r["batch_rows"] for r in results) > 1


def test_a_worker_without_llama_cpp_stops_at_start_naming_the_install(tmp_path: Path) -> None:
    # A llama_cpp that fails to import, first on the path: as on a machine without the extra.
    stub = tmp_path / "stub" / "llama_cpp"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("raise ImportError('libllama.so: cannot open shared object file')\n")
    data = tmp_path / "data"
    data.mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(stub.parent), str(ROOT)]),
        "ASSAY_GENERATOR_ENGINE": "llama-cpp",
        "ASSAY_DATA_DIR": str(data),
        "ASSAY_BROKER_URL": "",
    }
    st = Stack(base_url="", env=env, queue=f"llama-missing-{uuid.uuid4().hex[:6]}")
    worker = st.start_worker("no-llama")
    try:
        code = worker.wait(timeout=120)
    finally:
        st.close()
    log = st.dump_logs()
    assert code != 0, log
    assert "make llama-cpp" in log and "ASSAY_GENERATOR_ENGINE=llama-cpp" in log, log
