"""The llama.cpp engine against a fake ``llama_cpp`` module that fails loudly when misused.

The fake speaks a fixed script, byte by byte, then its end-of-turn token. It raises when its
``Llama`` is entered from two threads at once, when it is sampled twice from the same logits,
fed past its context, given text instead of bytes, or when a sampler chain is used after it was
freed or freed twice; tests also check that every chain was freed and the model loaded once.
The real library is exercised by tests/integration/test_llama_engine.py.
"""

from __future__ import annotations

import contextlib
import math
import random
import sys
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from evaluators import models
from evaluators.contracts import ModelInfo, SamplingParams
from evaluators.errors import ConfigError, InputError, ModelMissingError
from workers.generation import (
    ContinuousBatcher,
    DecodeRequest,
    GeneratorOptions,
    get_generator,
    llama_engine,
    require_engine,
)
from workers.generation.llama_engine import LlamaCppGenerator

SCRIPT = "The capital of France is Paris. It is known for the Eiffel Tower, and café culture."
EOT, START = 0, 1
SPECIALS = {EOT: b"<|im_end|>", START: b"<|im_start|>"}
VOCAB = 2 + 256  # the two specials, then one token per byte
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class Misuse(AssertionError):
    """The engine used the fake library in a way the real one does not allow."""


def byte_token(b: int) -> int:
    return 2 + b


class OneCaller:
    """The real objects take one thread at a time: a second one inside at once corrupts them."""

    what = "object"

    def __init__(self) -> None:
        self._inside = threading.Lock()

    @contextlib.contextmanager
    def inside(self) -> Iterator[None]:
        if not self._inside.acquire(blocking=False):
            raise Misuse(f"{self.what} used from two threads at once")
        try:
            yield
        finally:
            self._inside.release()


class FakeLlama(OneCaller):
    what = "Llama"
    instances: list[FakeLlama] = []
    model_context = 96
    """The model's training context (small, to test the limit), as llama_model_n_ctx_train gives it."""

    def __init__(self, *, model_path: str, n_ctx: int, n_threads: int, n_threads_batch: int, verbose: bool):
        if not Path(model_path).is_file():
            raise ValueError(f"Failed to load model from file: {model_path}")
        super().__init__()
        self.model_path, self.threads = model_path, n_threads
        self.model = object()
        self.metadata = {"tokenizer.chat_template": TEMPLATE}
        self.tokenize_calls: list[tuple[bool, bool]] = []
        FakeLlama.instances.append(self)

    def n_vocab(self) -> int:
        return VOCAB

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> list[int]:
        if not isinstance(text, bytes):
            raise TypeError("tokenize takes utf-8 bytes")
        with self.inside():
            self.tokenize_calls.append((add_bos, special))
            out: list[int] = []
            i = 0
            while i < len(text):
                for tok, s in SPECIALS.items():
                    if special and text.startswith(s, i):
                        out.append(tok)
                        i += len(s)
                        break
                else:
                    out.append(byte_token(text[i]))
                    i += 1
            return out

    def detokenize(self, tokens: list[int], prev_tokens: Any = None, special: bool = False) -> bytes:
        with self.inside():
            return b"".join(
                (SPECIALS[t] if special else b"") if t in SPECIALS else bytes([t - 2]) for t in tokens
            )

    @staticmethod
    def logits(step: int) -> list[float]:
        """Step ``step`` of a sequence: the script's next byte is the favourite; every other token
        gets a small fixed score."""
        script = SCRIPT.encode()
        favourite = byte_token(script[step]) if step < len(script) else EOT
        rnd = random.Random(step)
        return [5.0 if t == favourite else rnd.random() * 3 for t in range(VOCAB)]


class FakeContext(OneCaller):
    """A decoding context: a unified KV cache of ``n_ctx`` cells shared by ``n_seq_max`` sequences."""

    what = "llama context"
    live: set[FakeContext] = set()

    def __init__(self, llm: FakeLlama, params: types.SimpleNamespace) -> None:
        super().__init__()
        if not params.kv_unified:
            raise Misuse("the engine relies on a unified KV cache")
        self.llm, self.n_ctx, self.n_batch = llm, params.n_ctx, params.n_batch
        self.n_seq, self.threads = params.n_seq_max, params.n_threads
        self.memory = ("memory", self)
        self.seqs: dict[int, list[int]] = {}
        self.prompt_len: dict[int, int] = {}
        self.outputs: dict[int, int] = {}  # batch index -> sequence, from the last decode
        self.decodes: list[int] = []  # tokens per decode call
        self.max_seqs = 0  # most sequences in one decode
        FakeContext.live.add(self)

    def decode(self, batch: FakeBatch) -> int:
        with self.inside():
            time.sleep(0.0005)  # widen the window in which a second thread would be caught
            n = batch.n_tokens
            if not 0 < n <= min(self.n_batch, batch.size):
                raise Misuse(f"a batch of {n} tokens (n_batch {self.n_batch}, allocated {batch.size})")
            if sum(map(len, self.seqs.values())) + n > self.n_ctx:
                return 1  # no KV slot: llama.cpp's answer, state unchanged
            outputs: dict[int, int] = {}
            for i in range(n):
                seq, pos = batch.seq_id[i][0], batch.pos[i]
                if batch.n_seq_id[i] != 1 or not 0 <= seq < self.n_seq:
                    raise Misuse(f"token {i}: sequence {seq} outside 0..{self.n_seq - 1}")
                cells = self.seqs.setdefault(seq, [])
                if pos != len(cells):
                    raise Misuse(f"sequence {seq}: token at position {pos}, expected {len(cells)}")
                cells.append(batch.token[i])
                if batch.logits[i]:
                    # The first output of a sequence follows its prompt.
                    self.prompt_len.setdefault(seq, len(cells))
                    outputs[i] = seq
            self.outputs = outputs
            self.decodes.append(n)
            self.max_seqs = max(self.max_seqs, len({batch.seq_id[i][0] for i in range(n)}))
            return 0

    def sample_logits(self, idx: int) -> list[float]:
        if idx not in self.outputs:
            raise Misuse(f"batch index {idx} has no logits (sampled twice, or not an output)")
        seq = self.outputs.pop(idx)
        return FakeLlama.logits(len(self.seqs[seq]) - self.prompt_len[seq])

    def seq_rm(self, seq: int) -> None:
        self.seqs.pop(seq, None)
        self.prompt_len.pop(seq, None)


class FakeBatch:
    def __init__(self, size: int) -> None:
        self.size, self.n_tokens = size, 0
        self.token, self.pos, self.n_seq_id = [0] * size, [0] * size, [0] * size
        self.seq_id, self.logits = [[0] for _ in range(size)], [0] * size


class Quantized:
    calls: list[tuple[str, str, int, bool]] = []
    fail = False


class Chain:
    live: set[Chain] = set()

    def __init__(self) -> None:
        self.stages: list[tuple[Any, ...]] = []
        self.history: list[int] = []
        self.freed = False
        Chain.live.add(self)

    def check(self) -> None:
        if self.freed:
            raise Misuse("sampler chain used after llama_sampler_free")


def _stage(*stage: Any) -> tuple[Any, ...]:
    return stage


def fake_module() -> types.ModuleType:
    m = types.ModuleType("llama_cpp")
    m.__version__ = "0.0-fake"  # type: ignore[attr-defined]
    m.LLAMA_DEFAULT_SEED = 0xFFFFFFFF  # type: ignore[attr-defined]
    m.Llama = FakeLlama  # type: ignore[attr-defined]

    def get_vocab(model: object) -> tuple[str, object]:
        return ("vocab", model)

    def is_eog(vocab: tuple[str, object], token: int) -> bool:
        assert vocab[0] == "vocab", "is_eog takes the model's vocab"
        return token == EOT

    def chain_init(params: str) -> Chain:
        assert params == "chain-params"
        return Chain()

    def chain_add(chain: Chain, stage: tuple[Any, ...]) -> None:
        chain.check()
        if chain.stages and chain.stages[-1][0] in {"greedy", "dist"}:
            raise Misuse("a stage after the chain's final pick")
        chain.stages.append(stage)

    def accept(chain: Chain, token: int) -> None:
        chain.check()
        chain.history.append(int(token))

    def sample(chain: Chain, ctx: FakeContext, idx: int) -> int:
        chain.check()
        if not isinstance(ctx, FakeContext):
            raise Misuse("sample takes the decoding context")
        with ctx.inside():
            token = _pick(chain, ctx.sample_logits(idx))
        chain.history.append(token)  # llama_sampler_sample accepts what it picked
        return token

    def init_from_model(model: object, params: types.SimpleNamespace) -> FakeContext:
        llm = next(x for x in FakeLlama.instances if x.model is model)
        return FakeContext(llm, params)

    def batch_init(n: int, embd: int, n_seq: int) -> FakeBatch:
        assert embd == 0 and n_seq == 1, "token batches, one sequence per token"
        return FakeBatch(n)

    def memory(ctx: FakeContext) -> tuple[str, FakeContext]:
        return ctx.memory

    def memory_clear(mem: tuple[str, FakeContext], data: bool) -> None:
        mem[1].seqs.clear()
        mem[1].prompt_len.clear()

    def seq_rm(mem: tuple[str, FakeContext], seq: int, p0: int, p1: int) -> bool:
        assert (p0, p1) == (-1, -1), "whole sequences leave"
        mem[1].seq_rm(seq)
        return True

    def quantize(src: bytes, dst: bytes, params: types.SimpleNamespace) -> int:
        Quantized.calls.append((src.decode(), dst.decode(), params.ftype, params.allow_requantize))
        if Quantized.fail:
            return 1
        Path(dst.decode()).write_bytes(
            b"GGUF " + str(params.ftype).encode() + b" " + Path(src.decode()).read_bytes()
        )
        return 0

    m.LLAMA_FTYPE_MOSTLY_F16 = 1  # type: ignore[attr-defined]
    m.LLAMA_FTYPE_MOSTLY_Q8_0 = 7  # type: ignore[attr-defined]
    m.llama_model_quantize_default_params = lambda: types.SimpleNamespace(  # type: ignore[attr-defined]
        ftype=0, allow_requantize=False, nthread=0
    )
    m.llama_model_quantize = quantize  # type: ignore[attr-defined]
    m.llama_context_default_params = lambda: types.SimpleNamespace(  # type: ignore[attr-defined]
        n_ctx=0, n_batch=2048, n_ubatch=512, n_seq_max=1, n_threads=4, n_threads_batch=4, kv_unified=False,
        no_perf=False,
    )  # fmt: skip
    m.llama_init_from_model = init_from_model  # type: ignore[attr-defined]
    m.llama_n_ctx = lambda ctx: ctx.n_ctx  # type: ignore[attr-defined]
    m.llama_model_n_ctx_train = lambda model: FakeLlama.model_context  # type: ignore[attr-defined]
    m.llama_batch_init = batch_init  # type: ignore[attr-defined]
    m.llama_get_memory = memory  # type: ignore[attr-defined]
    m.llama_memory_clear = memory_clear  # type: ignore[attr-defined]
    m.llama_memory_seq_rm = seq_rm  # type: ignore[attr-defined]
    m.llama_decode = lambda ctx, batch: ctx.decode(batch)  # type: ignore[attr-defined]

    def free(chain: Chain) -> None:
        chain.check()
        chain.freed = True
        Chain.live.discard(chain)

    m.llama_model_get_vocab = get_vocab  # type: ignore[attr-defined]
    m.llama_vocab_is_eog = is_eog  # type: ignore[attr-defined]
    m.llama_sampler_chain_default_params = lambda: "chain-params"  # type: ignore[attr-defined]
    m.llama_sampler_chain_init = chain_init  # type: ignore[attr-defined]
    m.llama_sampler_chain_add = chain_add  # type: ignore[attr-defined]
    m.llama_sampler_init_greedy = lambda: _stage("greedy")  # type: ignore[attr-defined]
    m.llama_sampler_init_temp = lambda t: _stage("temp", t)  # type: ignore[attr-defined]
    m.llama_sampler_init_top_k = lambda k: _stage("top_k", k)  # type: ignore[attr-defined]
    m.llama_sampler_init_top_p = lambda p, keep: _stage("top_p", p, keep)  # type: ignore[attr-defined]
    m.llama_sampler_init_dist = lambda seed: _stage("dist", seed)  # type: ignore[attr-defined]
    m.llama_sampler_init_penalties = lambda n, last, rep, freq, pres: _stage(  # type: ignore[attr-defined]
        "penalties", n, last, rep, freq, pres
    )
    m.llama_sampler_accept = accept  # type: ignore[attr-defined]
    m.llama_sampler_sample = sample  # type: ignore[attr-defined]
    m.llama_sampler_free = free  # type: ignore[attr-defined]
    return m


def _pick(chain: Chain, logits: list[float]) -> int:
    """The chain's stages in order, as llama.cpp applies them."""
    cand = dict(enumerate(logits))
    for stage in chain.stages:
        kind = stage[0]
        if kind == "penalties":
            _, _, last, rep, _, _ = stage
            for t in set(chain.history[-last:]):
                cand[t] = cand[t] / rep if cand[t] > 0 else cand[t] * rep
        elif kind == "temp":
            cand = {t: v / stage[1] for t, v in cand.items()}
        elif kind == "top_k":
            cand = dict(sorted(cand.items(), key=lambda kv: -kv[1])[: stage[1]])
        elif kind == "top_p":
            top = max(cand.values())
            probs = sorted(((t, math.exp(v - top)) for t, v in cand.items()), key=lambda kv: -kv[1])
            total, kept, mass = sum(p for _, p in probs), {}, 0.0
            for t, p in probs:
                kept[t] = cand[t]
                mass += p / total
                if mass >= stage[1]:
                    break
            cand = kept
        elif kind == "greedy":
            return max(cand, key=lambda t: cand[t])
        elif kind == "dist":
            seed = stage[1]
            rng = getattr(chain, "rng", None) or random.Random(None if seed == 0xFFFFFFFF else seed)
            chain.rng = rng  # type: ignore[attr-defined]
            top = max(cand.values())
            tokens = list(cand)
            return rng.choices(tokens, weights=[math.exp(cand[t] - top) for t in tokens])[0]
    raise Misuse("the chain never picks a token (no greedy or dist stage)")


@pytest.fixture
def lib(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[types.ModuleType]:
    module = fake_module()
    monkeypatch.setitem(sys.modules, "llama_cpp", module)
    # Converted weights go to the test's own folder, not the project's model cache.
    monkeypatch.setattr(llama_engine, "default_cache_dir", lambda: tmp_path / "models")
    Quantized.calls.clear()
    monkeypatch.setattr(Quantized, "fail", False)
    FakeLlama.instances.clear()
    FakeContext.live.clear()
    Chain.live.clear()
    # A registry of the test's own (swapped, not cleared: a session-wide app keeps what it
    # loaded, and its model-load metrics with it).
    monkeypatch.setattr(models, "_REGISTRY", models.ModelRegistry())
    yield module
    assert not Chain.live, "a sampler chain was never freed"


@pytest.fixture
def gguf(tmp_path: Path) -> str:
    path = tmp_path / "tiny.gguf"
    path.write_bytes(b"GGUF fake weights")
    return str(path)


@pytest.fixture
def gen(lib: types.ModuleType, gguf: str) -> LlamaCppGenerator:
    return LlamaCppGenerator(gguf, GeneratorOptions(generator_engine="llama-cpp", llama_threads=3)).load()


def req(prompt: str = "Capital of France?", **params: Any) -> DecodeRequest:
    n = params.pop("n", 1)
    stream = params.pop("on_text", None)
    cancel = params.pop("cancel", None)
    return DecodeRequest(
        prompt=prompt, params=SamplingParams(**params), num_return_sequences=n, on_text=stream, cancel=cancel
    )


def chain_of(gen: LlamaCppGenerator, **params: Any) -> list[tuple[Any, ...]]:
    """The sampler chain the engine builds for ``params`` (recorded by the fake)."""
    seen: list[Chain] = []
    real_init = sys.modules["llama_cpp"].llama_sampler_chain_init

    def spy(p: str) -> Chain:
        seen.append(real_init(p))
        return seen[-1]

    sys.modules["llama_cpp"].llama_sampler_chain_init = spy  # type: ignore[attr-defined]
    try:
        gen.generate([req(max_new_tokens=2, **params)])
    finally:
        sys.modules["llama_cpp"].llama_sampler_chain_init = real_init  # type: ignore[attr-defined]
    return seen[0].stages


def test_greedy_follows_the_model_and_reports_length(gen: LlamaCppGenerator) -> None:
    (out,) = gen.generate([req(temperature=0, max_new_tokens=18)])
    assert out.text == SCRIPT[:18]
    assert out.finish_reason == "length" and out.completion_tokens == 18 and out.batch_rows == 1
    assert out.prompt_tokens == len(gen.encode(req()))


def test_end_of_turn_stops_with_reason_stop_and_is_not_in_the_text(
    lib: types.ModuleType, gguf: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(FakeLlama, "model_context", 512)
    gen = LlamaCppGenerator(gguf).load()
    (out,) = gen.generate([req(temperature=0, max_new_tokens=300)])
    assert out.text == SCRIPT
    assert out.finish_reason == "stop"
    assert out.completion_tokens == len(SCRIPT.encode()) + 1  # the end-of-turn token counts


def test_stop_strings_cut_before_the_earliest(gen: LlamaCppGenerator) -> None:
    (out,) = gen.generate([req(temperature=0, max_new_tokens=60, stop=["Paris", "France"])])
    assert out.text == "The capital of "
    assert out.finish_reason == "stop_sequence"


def test_the_sampler_chain_follows_hf_order_and_every_parameter(gen: LlamaCppGenerator) -> None:
    n_ctx = gen.info()["optimizations"]["n_ctx"]
    assert chain_of(gen, temperature=0) == [("greedy",)]
    assert chain_of(gen, temperature=0, repetition_penalty=1.3) == [
        ("penalties", VOCAB, n_ctx, 1.3, 0.0, 0.0),
        ("greedy",),
    ]
    assert chain_of(gen, temperature=0.7, top_k=20, top_p=0.9, seed=5, repetition_penalty=1.1) == [
        ("penalties", VOCAB, n_ctx, 1.1, 0.0, 0.0),
        ("temp", 0.7),
        ("top_k", 20),
        ("top_p", 0.9, 1),
        ("dist", 5),
    ]
    # Disabled stages are left out; no seed: llama.cpp's random seed.
    assert chain_of(gen, temperature=1.0, top_k=0, top_p=1.0) == [("temp", 1.0), ("dist", 0xFFFFFFFF)]
    assert chain_of(gen, temperature=1.0, top_k=VOCAB + 5, top_p=1.0, seed=-1) == [
        ("temp", 1.0),
        ("dist", 0xFFFFFFFE),  # a given seed never becomes the "random" one
    ]


def test_the_repetition_penalty_sees_the_prompt(gen: LlamaCppGenerator, lib: types.ModuleType) -> None:
    chains: list[Chain] = []
    real_init = lib.llama_sampler_chain_init
    lib.llama_sampler_chain_init = lambda p: chains.append(real_init(p)) or chains[-1]  # type: ignore[attr-defined]
    request = req(temperature=0, repetition_penalty=1.5, max_new_tokens=3)
    gen.generate([request])
    prompt = gen.encode(request)
    assert chains[0].history[: len(prompt)] == prompt and len(chains[0].history) == len(prompt) + 3


def test_seeds_reproduce_and_samples_use_seed_plus_i(gen: LlamaCppGenerator) -> None:
    hot = {"temperature": 3.0, "top_k": 0, "top_p": 1.0, "max_new_tokens": 12}
    a = gen.generate([req(seed=11, **hot)])[0]
    b = gen.generate([req(seed=11, **hot)])[0]
    c = gen.generate([req(seed=12, **hot)])[0]
    assert a.text == b.text and a.text != c.text
    three = gen.generate([req(seed=11, n=3, **hot)])[0]
    assert three.samples[0] == a.text and three.samples[1] == c.text
    assert len(three.sample_finish_reasons) == 3 and three.completion_tokens == 36


def test_streaming_hands_out_whole_words_that_add_up_to_the_text(gen: LlamaCppGenerator) -> None:
    pieces: list[str] = []
    (out,) = gen.generate([req(temperature=0, max_new_tokens=40, stop=["Eiffel"], on_text=pieces.append)])
    assert "".join(pieces) == out.text
    assert all(p.startswith(" ") for p in pieces[1:]) and len(pieces) > 3  # cut before spaces


def test_an_incomplete_character_is_held_back_until_whole(
    lib: types.ModuleType, gguf: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(FakeLlama, "model_context", 512)
    gen = LlamaCppGenerator(gguf).load()
    pieces: list[str] = []
    (out,) = gen.generate([req(temperature=0, max_new_tokens=300, on_text=pieces.append)])
    assert out.text.endswith("café culture.") and "\ufffd" not in "".join(pieces)


def test_cancel_stops_the_decode(gen: LlamaCppGenerator) -> None:
    cancel = threading.Event()
    seen: list[str] = []

    def on_text(piece: str) -> None:
        seen.append(piece)
        cancel.set()

    (out,) = gen.generate([req(temperature=0, max_new_tokens=60, on_text=on_text, cancel=cancel)])
    assert out.finish_reason == "cancelled" and out.completion_tokens < 10
    (again,) = gen.generate([req(temperature=0, max_new_tokens=60, cancel=cancel)])  # cancelled while queued
    assert again.finish_reason == "cancelled" and again.completion_tokens == 0 and again.text == ""


def test_chat_messages_use_the_ggufs_template_and_raw_prompts_do_not(gen: LlamaCppGenerator) -> None:
    llm = FakeLlama.instances[0]
    msgs = DecodeRequest(
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    )
    ids = gen.encode(msgs)
    text = llm.detokenize(ids, special=True).decode()
    assert (
        text
        == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert ids[0] == START and llm.tokenize_calls[-1] == (False, True)
    raw = gen.encode(DecodeRequest(prompt="<|im_end|>", raw_prompt=True))
    assert EOT not in raw and llm.tokenize_calls[-1] == (True, False)  # a user cannot inject specials


def test_context_limits(gen: LlamaCppGenerator) -> None:
    with pytest.raises(InputError, match="context is 96"):
        gen.generate([req("x" * 200)])
    (out,) = gen.generate([req(temperature=0, max_new_tokens=500)])  # clamped to what fits
    assert out.prompt_tokens + out.completion_tokens == 96 and out.finish_reason == "length"


def test_the_front_batches_many_threads_on_one_model(lib: types.ModuleType, gguf: str) -> None:
    options = GeneratorOptions(generator_engine="llama-cpp")
    front = get_generator(gguf, options)
    assert get_generator(gguf, options) is front and len(FakeLlama.instances) == 1
    assert isinstance(front, ContinuousBatcher)
    requests = [req(f"prompt {i}", temperature=0, max_new_tokens=5 + i) for i in range(10)]
    futures = [front.submit(r) for r in requests]
    outs = [f.result(timeout=30) for f in futures]
    assert [o.text for o in outs] == [SCRIPT[: 5 + i] for i in range(10)]
    (ctx,) = FakeContext.live
    assert ctx.max_seqs > 1 and max(o.batch_rows for o in outs) > 1  # they shared decode steps
    # Direct callers from many threads are serialized on the same context (the fake raises on overlap).
    gen = front.generator
    errors: list[BaseException] = []

    def call() -> None:
        try:
            (out,) = gen.generate([req(temperature=0, max_new_tokens=8)])
            assert out.text == SCRIPT[:8]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert front.submit(req(temperature=0, max_new_tokens=4)).result(timeout=30).text == SCRIPT[:4]
    block = ModelInfo.model_validate(front.info())
    assert block.model_extra and block.model_extra["engine"] == "llama-cpp"
    assert block.model_extra["batching"]["mode"] == "continuous"


def test_requests_of_one_call_decode_together_each_as_alone(
    lib: types.ModuleType, gguf: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(FakeLlama, "model_context", 512)
    gen = LlamaCppGenerator(gguf).load()
    hot = {"temperature": 3.0, "top_k": 0, "top_p": 1.0, "max_new_tokens": 10}
    alone = [gen.generate([req(seed=s, **hot)])[0].text for s in (1, 2)]
    outs = gen.generate(
        [req("a", temperature=0, max_new_tokens=12), req(seed=1, **hot), req("bb", seed=2, n=2, **hot)]
    )
    assert outs[0].text == SCRIPT[:12] and outs[1].text == alone[0] and outs[2].samples[0] == alone[1]
    assert all(o.batch_rows == 4 for o in outs)
    (ctx,) = FakeContext.live
    assert ctx.max_seqs == 4 and not ctx.seqs  # every sequence left the cache


def test_a_job_joins_mid_decode_and_a_short_one_leaves_first(
    lib: types.ModuleType, gguf: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(FakeLlama, "model_context", 512)
    front = get_generator(gguf, GeneratorOptions(generator_engine="llama-cpp"))
    started, cancel = threading.Event(), threading.Event()
    # Past the script it keeps picking end-of-turn, which it ignores: it runs until cancelled.
    long = front.submit(
        DecodeRequest(
            prompt="long", params=SamplingParams(temperature=0, max_new_tokens=450), ignore_eos=True,
            on_text=lambda _: started.set(), cancel=cancel,
        )
    )  # fmt: skip
    assert started.wait(10)  # the long job is decoding
    short = front.submit(req("short", temperature=0, max_new_tokens=3)).result(timeout=10)
    assert short.text == SCRIPT[:3] and short.batch_rows == 2  # it joined the running batch
    assert not long.done()  # and left it first
    cancel.set()
    out = long.result(timeout=10)
    assert out.finish_reason == "cancelled" and out.completion_tokens > 3 and SCRIPT.startswith(out.text)
    (ctx,) = FakeContext.live
    assert not ctx.seqs


def test_long_prompts_prefill_in_chunks_beside_decoding_rows(
    gen: LlamaCppGenerator, monkeypatch: pytest.MonkeyPatch
) -> None:
    (ctx,) = FakeContext.live
    monkeypatch.setattr(ctx, "n_batch", 8)  # the engine's LLAMA_BATCH, made small for the fake
    monkeypatch.setattr(gen._state().context, "n_batch", 8)
    outs = gen.generate(
        [req("x", temperature=0, max_new_tokens=30), req("y" * 40, temperature=0, max_new_tokens=5)]
    )
    assert [o.text for o in outs] == [SCRIPT[:30], SCRIPT[:5]]
    assert max(ctx.decodes) == 8 and len(ctx.decodes) >= 40 // 8


def test_a_row_that_does_not_fit_the_cache_waits_for_cells(gen: LlamaCppGenerator) -> None:
    # 96 cells: each request reserves its prompt and 60 tokens, so the second waits for the first.
    outs = gen.generate(
        [req("p", temperature=0, max_new_tokens=60), req("q", temperature=0, max_new_tokens=60)]
    )
    assert [o.text for o in outs] == [SCRIPT[:60]] * 2
    (ctx,) = FakeContext.live
    assert ctx.max_seqs == 1


def test_more_rows_than_sequences_reuse_them(lib: types.ModuleType, gguf: str) -> None:
    gen = LlamaCppGenerator(gguf, GeneratorOptions(generator_engine="llama-cpp", max_batch_size=2)).load()
    outs = gen.generate([req(temperature=0, max_new_tokens=3 + i) for i in range(5)])
    assert [o.text for o in outs] == [SCRIPT[: 3 + i] for i in range(5)]
    (ctx,) = FakeContext.live
    assert ctx.n_seq == 2 and ctx.max_seqs == 2


def test_a_failed_step_fails_its_jobs_and_the_next_job_starts_clean(
    lib: types.ModuleType, gguf: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    front = get_generator(gguf, GeneratorOptions(generator_engine="llama-cpp"))
    assert front.submit(req(temperature=0, max_new_tokens=3)).result(timeout=10).text == SCRIPT[:3]
    (ctx,) = FakeContext.live
    real = ctx.decode
    monkeypatch.setattr(ctx, "decode", lambda batch: -3)  # a fatal llama_decode error
    with pytest.raises(RuntimeError, match="llama_decode returned -3"):
        front.submit(req(temperature=0, max_new_tokens=3)).result(timeout=10)
    monkeypatch.setattr(ctx, "decode", real)
    assert front.submit(req(temperature=0, max_new_tokens=5)).result(timeout=10).text == SCRIPT[:5]
    assert not Chain.live


def test_loads_lazily_once_and_reports_its_file(lib: types.ModuleType, gguf: str) -> None:
    gen = LlamaCppGenerator(gguf, GeneratorOptions(generator_engine="llama-cpp", llama_threads=3))
    assert not gen.loaded and not FakeLlama.instances and gen.info()["loaded"] is False
    gen.generate([req(temperature=0, max_new_tokens=2)])
    gen.load()
    assert len(FakeLlama.instances) == 1 and FakeLlama.instances[0].threads == 3
    info = gen.info()
    assert info["source"].startswith("gguf:") and len(info["revision"]) == 64 and info["path"] == gguf


def test_only_gguf_models(lib: types.ModuleType, tmp_path: Path) -> None:
    with pytest.raises(ModelMissingError, match="GGUF"):
        LlamaCppGenerator("HuggingFaceTB/SomeOtherModel").load()
    with pytest.raises(ModelMissingError, match="GGUF"):
        LlamaCppGenerator(str(tmp_path / "missing.gguf")).load()


def test_a_missing_library_names_the_install_command(monkeypatch: pytest.MonkeyPatch, gguf: str) -> None:
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp raises ImportError
    with pytest.raises(ConfigError, match="make llama-cpp") as caught:
        require_engine("llama-cpp")
    assert "ASSAY_GENERATOR_ENGINE" in caught.value.detail
    with pytest.raises(ConfigError, match="make llama-cpp"):
        LlamaCppGenerator(gguf).load()
    require_engine("transformers")  # needs nothing extra


def test_engine_setting_is_typed(monkeypatch: pytest.MonkeyPatch) -> None:
    from workers.settings import WorkerSettings

    monkeypatch.setenv("ASSAY_GENERATOR_ENGINE", "llama-cpp")
    monkeypatch.setenv("ASSAY_LLAMA_THREADS", "2")
    settings = WorkerSettings()
    assert settings.generator_engine == "llama-cpp"
    options = GeneratorOptions.from_settings(settings)
    assert options.generator_engine == "llama-cpp" and options.llama_threads == 2
    monkeypatch.setenv("ASSAY_GENERATOR_ENGINE", "vllm")
    with pytest.raises(ValueError, match="generator_engine"):
        WorkerSettings()
    with pytest.raises(ConfigError, match="generator_engine"):
        GeneratorOptions(generator_engine="vllm")  # type: ignore[arg-type]


def test_an_openmp_build_is_named_at_load(
    lib: types.ModuleType, gguf: str, caplog: pytest.LogCaptureFixture
) -> None:
    # In a worker, beside torch's OpenMP threads, an OpenMP llama.cpp decodes ~3x slower.
    lib.llama_print_system_info = lambda: b"CPU : AVX2 = 1 | OPENMP = 1 | REPACK = 1 | "  # type: ignore[attr-defined]
    with caplog.at_level("WARNING", logger="workers.generation.llama_engine"):
        LlamaCppGenerator(gguf, GeneratorOptions(generator_engine="llama-cpp")).load()
    assert "built with OpenMP" in caplog.text and "make llama-cpp" in caplog.text
    caplog.clear()
    lib.llama_print_system_info = lambda: b"CPU : AVX2 = 1 | REPACK = 1 | "  # type: ignore[attr-defined]
    with caplog.at_level("WARNING", logger="workers.generation.llama_engine"):
        LlamaCppGenerator(gguf, GeneratorOptions(generator_engine="llama-cpp")).load()
    assert "OpenMP" not in caplog.text


def test_weights_convert_once_to_f16_by_default_and_source_loads_the_gguf(
    lib: types.ModuleType, gguf: str, tmp_path: Path
) -> None:
    gen = LlamaCppGenerator(gguf).load()
    ((src, _, ftype, requantize),) = Quantized.calls
    assert src == gguf and ftype == lib.LLAMA_FTYPE_MOSTLY_F16 and requantize
    info = gen.info()
    dst = info["weights"]
    assert info["dtype"] == "f16" and dst.endswith(".f16.gguf") and Path(dst).parent == tmp_path / "models"
    assert info["path"] == gguf and FakeLlama.instances[-1].model_path == dst
    assert not list((tmp_path / "models").glob(".*tmp*"))  # no half-written file left
    LlamaCppGenerator(gguf).load()  # a second process finds the file: no conversion
    assert len(Quantized.calls) == 1
    q8 = LlamaCppGenerator(gguf, GeneratorOptions(generator_engine="llama-cpp", llama_weights="q8_0")).load()
    assert Quantized.calls[-1][2] == lib.LLAMA_FTYPE_MOSTLY_Q8_0 and q8.info()["weights"] != dst
    plain = LlamaCppGenerator(
        gguf, GeneratorOptions(generator_engine="llama-cpp", llama_weights="source")
    ).load()
    assert len(Quantized.calls) == 2 and FakeLlama.instances[-1].model_path == gguf
    assert plain.info()["weights"] == gguf and plain.info()["dtype"] == "source"
    with pytest.raises(ConfigError, match="llama_weights"):
        GeneratorOptions(llama_weights="q2_k")  # type: ignore[arg-type]


def test_a_failed_conversion_names_the_way_out_and_leaves_nothing(
    lib: types.ModuleType, gguf: str, tmp_path: Path
) -> None:
    Quantized.fail = True
    with pytest.raises(ModelMissingError, match="ASSAY_LLAMA_WEIGHTS=source"):
        LlamaCppGenerator(gguf).load()
    assert not [p for p in (tmp_path / "models").iterdir() if p.suffix == ".gguf" or "tmp" in p.name]
