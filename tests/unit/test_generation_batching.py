"""The batched decode loop and the batching front, on a tiny random Llama (no real model)."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from evaluators import models as model_registry
from evaluators.contracts import ChatMessage, SamplingParams
from evaluators.errors import ConfigError, InputError, ModelMissingError
from evaluators.models import registry
from workers.generation import (
    CONVERSION_MARKER,
    BatchingGenerator,
    DecodeRequest,
    GenerationOutput,
    Generator,
    GeneratorOptions,
    get_generator,
    resolve_model,
    sampling_params,
)
from workers.generation import resolve as resolution

WORDS = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "far", "away", "to", "see"]
WORDS += ["big", "red", "sun", ",", "."]
VOCAB = ["<pad>", "<eos>", "<bos>", *WORDS, *(f"w{i}" for i in range(40))]
EOS = 1

GREEDY = SamplingParams(temperature=0, max_new_tokens=12)
PROMPTS = ["the", "the cat sat on", "a big red dog ran far away to see the sun"]


def tiny_tokenizer(chat_template: str | None = None) -> PreTrainedTokenizerFast:
    raw = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="<pad>"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=raw, eos_token="<eos>", pad_token="<pad>", bos_token="<bos>"
    )
    tok.chat_template = chat_template
    return tok


def tiny_model(attn: str = "sdpa", dtype: torch.dtype = torch.float64) -> LlamaForCausalLM:
    torch.manual_seed(0)
    extra: dict[str, Any] = {"attn_implementation": attn}  # valid, but not in the stubs
    config = LlamaConfig(
        **extra,
        vocab_size=len(VOCAB),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=2,
        eos_token_id=EOS,
        pad_token_id=0,
        # Peaky logits: greedy choices are far from ties, so padding noise cannot flip them.
        initializer_range=0.5,
    )
    model: Any = LlamaForCausalLM(config)
    # float64 makes batch-shape rounding differences negligible for the equality checks.
    return model.to(dtype).eval()


@pytest.fixture(scope="module")
def gen() -> Generator:
    return Generator.from_model(tiny_model(), tiny_tokenizer(), model_id="tiny")


def req(prompt: str, **params: Any) -> DecodeRequest:
    """Greedy, 12 tokens, EOS ignored unless ``params`` say otherwise (request fields included)."""
    request = {"num_return_sequences": params.pop("num_return_sequences", 1)}
    request["ignore_eos"] = params.pop("ignore_eos", True)
    base: dict[str, Any] = {"temperature": 0, "max_new_tokens": 12}
    return DecodeRequest(prompt=prompt, params=SamplingParams(**{**base, **params}), **request)


def solo(g: Generator, r: DecodeRequest) -> GenerationOutput:
    return g.generate([r])[0]


# --------------------------------------------------------------- decode loop


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_batched_greedy_equals_single(attn: str) -> None:
    # Eager attention in float64 turns fully padded query rows into NaN inside
    # transformers (its float32 softmax sees -inf everywhere), so eager runs fp32.
    dtype = torch.float64 if attn == "sdpa" else torch.float32
    g = Generator.from_model(tiny_model(attn, dtype), tiny_tokenizer())
    requests = [req(p) for p in PROMPTS]  # 1, 4 and 11 tokens: real left padding
    batched = g.generate(requests)
    alone = [solo(g, r) for r in requests]
    assert [o.text for o in batched] == [o.text for o in alone]
    assert all(o.completion_tokens == 12 and o.finish_reason == "length" for o in batched)
    assert all(o.batch_rows == 3 for o in batched)
    assert len({o.text for o in batched}) == 3  # not a degenerate constant output


def test_greedy_matches_hf_generate(gen: Generator) -> None:
    """Own loop (cache, positions, mask) reproduces transformers' greedy tokens."""
    tok = gen.tokenizer
    for prompt in PROMPTS:
        ids = tok(prompt, return_tensors="pt")["input_ids"]
        model: Any = gen.model
        ref = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=10)
        expected = tok.decode(ref[0, ids.shape[1] :], skip_special_tokens=True)
        out = solo(gen, req(prompt, max_new_tokens=10, ignore_eos=False))
        assert out.text == expected


def test_per_row_max_new_tokens(gen: Generator) -> None:
    limits = [1, 5, 9]
    outs = gen.generate([req(p, max_new_tokens=n) for p, n in zip(PROMPTS, limits, strict=True)])
    assert [o.completion_tokens for o in outs] == limits
    assert all(o.finish_reason == "length" for o in outs)
    for prompt, out in zip(PROMPTS, outs, strict=True):  # a prefix of the longer run
        assert solo(gen, req(prompt, max_new_tokens=12)).text.startswith(out.text)
    # The short rows finishing early does not change the long one.
    assert outs[2].text == solo(gen, req(PROMPTS[2], max_new_tokens=9)).text


def test_pruning_finished_rows_changes_nothing() -> None:
    model, tok = tiny_model(), tiny_tokenizer()
    requests = [req(p, max_new_tokens=n) for p, n in zip(PROMPTS, [2, 7, 12], strict=True)]
    pruned = Generator.from_model(model, tok, GeneratorOptions(prune_finished=True))
    kept = Generator.from_model(model, tok, GeneratorOptions(prune_finished=False))
    assert [o.text for o in pruned.generate(requests)] == [o.text for o in kept.generate(requests)]


@pytest.mark.slow
def test_compiled_static_cache_path_matches_eager() -> None:
    """compile=True decodes over a StaticCache with a compiled step (~20 s to compile on CPU)."""
    model, tok = tiny_model(dtype=torch.float32), tiny_tokenizer()
    eager = Generator.from_model(model, tok)
    compiled = Generator.from_model(model, tok, GeneratorOptions(compile=True))
    requests = [req(p, max_new_tokens=n) for p, n in zip(PROMPTS, [3, 8, 12], strict=True)]
    expected = [o.text for o in eager.generate(requests)]
    assert [o.text for o in compiled.generate(requests)] == expected
    assert compiled.info()["optimizations"]["kv_cache"] == "static"
    assert compiled.info()["optimizations"]["prune_finished"] is False


def test_stop_sequence_cuts_text_per_row(gen: Generator) -> None:
    free = solo(gen, req(PROMPTS[1])).text.split()
    stop_word = free[3]
    first = free.index(stop_word)
    stopped, other = gen.generate([req(PROMPTS[1], stop=[stop_word]), req(PROMPTS[2])])
    assert stopped.finish_reason == "stop_sequence"
    assert stopped.text == " ".join(free[:first]) + (" " if first else "")
    assert stop_word not in stopped.text.split()
    # Tokens up to the one that completed the stop count (special tokens decode to "").
    assert first + 1 <= stopped.completion_tokens < 12
    assert other.text == solo(gen, req(PROMPTS[2])).text  # untouched by its neighbour's stop
    assert other.finish_reason == "length"


def test_eos_finishes_with_stop_reason() -> None:
    model, tok = tiny_model(), tiny_tokenizer()
    with torch.no_grad():  # make EOS the only sensible next token
        model.lm_head.weight[EOS] = model.lm_head.weight[EOS] * 0 + 50.0
        model.model.norm.weight.fill_(1.0)
    g = Generator.from_model(model, tok)
    stops, ignores = g.generate([req("the cat", ignore_eos=False), req("the cat", ignore_eos=True)])
    assert stops.finish_reason == "stop"
    assert stops.completion_tokens < 12
    assert ignores.finish_reason == "length"
    assert ignores.completion_tokens == 12


def test_seed_reproduces_and_is_independent_of_neighbours(gen: Generator) -> None:
    sampled = {"temperature": 1.0, "top_k": 0, "top_p": 1.0}
    a = solo(gen, req(PROMPTS[1], seed=7, **sampled))
    b = solo(gen, req(PROMPTS[1], seed=7, **sampled))
    c = solo(gen, req(PROMPTS[1], seed=8, **sampled))
    assert a.text == b.text
    assert a.text != c.text
    # Same prompt length as its neighbour (no extra padding): own generator, same draws.
    neighbour = req("a big red dog", temperature=1.0, top_k=0, top_p=1.0)
    in_batch, _ = gen.generate([req(PROMPTS[1], seed=7, **sampled), neighbour])
    assert in_batch.text == a.text


def test_num_return_sequences_expands_rows(gen: Generator) -> None:
    sampled = {"temperature": 1.2, "top_k": 0, "top_p": 1.0, "seed": 7}
    single = solo(gen, req(PROMPTS[1], **sampled))
    multi = solo(gen, req(PROMPTS[1], num_return_sequences=4, **sampled))
    assert len(multi.samples) == 4
    assert multi.samples[0] == multi.text == single.text  # sample i uses seed + i
    assert len(set(multi.samples)) > 1
    assert multi.completion_tokens == 4 * 12
    assert multi.batch_rows == 4
    assert multi.sample_finish_reasons == ["length"] * 4


def test_top_k_1_and_tiny_top_p_are_greedy_per_row(gen: Generator) -> None:
    greedy = solo(gen, req(PROMPTS[2])).text
    outs = gen.generate(
        [
            req(PROMPTS[2], temperature=1.5, top_k=1, seed=1),
            req(PROMPTS[2], temperature=1.5, top_k=0, top_p=1e-6, seed=2),
            req(PROMPTS[2], temperature=1.5, top_k=0, top_p=0.0, seed=4),
            req(PROMPTS[2], temperature=5.0, top_k=0, top_p=1.0, seed=3),
        ]
    )
    assert outs[0].text == greedy
    assert outs[1].text == greedy
    assert outs[2].text == greedy  # top_p=0 keeps the most likely token, as in HF
    assert outs[3].text != greedy  # a hot, untruncated row in the same batch really samples


def test_repetition_penalty_applies_to_its_row_only(gen: Generator) -> None:
    plain = solo(gen, req(PROMPTS[0], max_new_tokens=20))
    penalized, neighbour = gen.generate(
        [req(PROMPTS[0], max_new_tokens=20, repetition_penalty=1e6), req(PROMPTS[0], max_new_tokens=20)]
    )
    words = plain.text.split()
    assert len(set(words)) < len(words)  # the free run repeats itself...
    pwords = penalized.text.split()
    assert len(set(pwords)) == len(pwords)  # ...the penalized one never does,
    assert PROMPTS[0] not in pwords  # not even a prompt token
    assert neighbour.text == plain.text


def test_chat_template_wraps_prompt_unless_raw() -> None:
    tok = tiny_tokenizer("{% for m in messages %}<bos> {{ m['content'] }} <eos> {% endfor %}<bos>")
    g = Generator.from_model(tiny_model(), tok)
    assert g.encode(DecodeRequest(prompt="the cat")) == tok("<bos> the cat <eos> <bos>")["input_ids"]
    assert g.encode(DecodeRequest(prompt="the cat", raw_prompt=True)) == tok("the cat")["input_ids"]
    messages = [{"role": "user", "content": "the"}, {"role": "user", "content": "cat"}]
    wrapped = g.encode(DecodeRequest(messages=messages))
    assert wrapped == tok("<bos> the <eos> <bos> cat <eos> <bos>")["input_ids"]
    out = g.generate([DecodeRequest(messages=messages, params=GREEDY, ignore_eos=True)])[0]
    assert out.prompt_tokens == len(wrapped)


def test_messages_without_chat_template_is_an_input_error(gen: Generator) -> None:
    with pytest.raises(InputError, match="chat template"):
        gen.generate([DecodeRequest(messages=[{"role": "user", "content": "hi"}])])


def test_prompt_longer_than_context_is_an_input_error(gen: Generator) -> None:
    with pytest.raises(InputError, match="context"):
        gen.generate([req("the " * 200)])


def test_max_new_tokens_is_clamped_to_the_context(gen: Generator) -> None:
    out = solo(gen, req("the " * 120, max_new_tokens=50))
    assert out.prompt_tokens == 120
    assert out.completion_tokens == 8  # 128 positions in the tiny model
    assert out.finish_reason == "length"


def test_chunks_respect_max_batch_size() -> None:
    g = Generator.from_model(tiny_model(), tiny_tokenizer(), GeneratorOptions(max_batch_size=2))
    requests = [req(p) for p in PROMPTS] + [req(PROMPTS[0], num_return_sequences=2)]
    outs = g.generate(requests)
    assert all(o.batch_rows <= 2 for o in outs)
    assert [o.text for o in outs[:3]] == [solo(g, r).text for r in requests[:3]]


def test_request_and_params_validation() -> None:
    with pytest.raises(InputError):
        DecodeRequest()
    with pytest.raises(InputError):
        DecodeRequest(prompt="x", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(InputError, match="messages"):
        DecodeRequest(messages=[])
    with pytest.raises(InputError, match="message 1"):
        DecodeRequest(messages=[{"role": "user", "content": "x"}, {"role": "robot", "content": "y"}])
    with pytest.raises(InputError, match="num_return_sequences"):
        DecodeRequest(prompt="x", num_return_sequences=0)
    with pytest.raises(InputError, match="top_p"):
        sampling_params({"top_p": 1.5})
    with pytest.raises(InputError, match="temperature"):
        sampling_params({"temperature": -1})
    with pytest.raises(InputError, match="stop"):
        sampling_params({"stop": ("",)})
    with pytest.raises(ConfigError, match="dtype"):
        GeneratorOptions(dtype="int4")
    with pytest.raises(ConfigError, match="attn_implementation"):
        GeneratorOptions(attn_implementation="flash")
    assert sampling_params({"stop": ["a", "b"]}).stop == ("a", "b")
    assert sampling_params({"stop": "a"}).stop == ("a",)


def test_messages_as_contract_objects_or_dicts() -> None:
    as_dicts = DecodeRequest(messages=[{"role": "system", "content": "s"}, {"role": "user", "content": "u"}])
    as_contract = DecodeRequest(
        messages=(ChatMessage(role="system", content="s"), ChatMessage(role="user", content="u"))
    )
    assert as_dicts == as_contract
    assert as_dicts.chat() == [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    assert DecodeRequest(prompt="p").chat() is None


def test_info_reports_the_model_block(gen: Generator) -> None:
    info = gen.info()
    assert info["id"] == "tiny"
    assert info["device"] == "cpu"
    assert info["dtype"] == "float64"
    assert info["optimizations"]["attn_implementation"] == "sdpa"
    assert info["optimizations"]["kv_cache"] == "dynamic"
    unloaded = Generator("smollm2").info()  # no model load just to describe it
    assert unloaded["loaded"] is False
    assert unloaded["options"]["attn_implementation"] == "sdpa"


# --------------------------------------------------------- model resolution


def test_unknown_model_is_missing_not_downloaded(tmp_path: Path) -> None:
    with pytest.raises(ModelMissingError, match="not on this machine") as err:
        resolve_model("no-such-org/no-such-model-4242", tmp_path)
    assert "never downloads" in str(err.value)
    with pytest.raises(ModelMissingError, match="does not exist"):
        resolve_model(str(tmp_path / "nope.gguf"), tmp_path)
    with pytest.raises(ModelMissingError, match="does not exist"):
        resolve_model(str(tmp_path / "nope"), tmp_path)


def test_local_folder_is_used_as_is(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    with pytest.raises(ModelMissingError, match=r"config\.json"):
        resolve_model(str(folder), tmp_path)
    (folder / "config.json").write_text("{}")
    resolved = resolve_model(str(folder), tmp_path)
    assert resolved.path == folder and resolved.source == "folder"
    assert resolved.revision_or_hash


def test_hf_cache_snapshot_is_found_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--acme--tiny-lm"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelMissingError, match="only part"):
        resolve_model("acme/tiny-lm", tmp_path / "models")
    (snapshot / "config.json").write_text("{}")
    resolved = resolve_model("acme/tiny-lm", tmp_path / "models")
    assert resolved.path == snapshot
    assert resolved.source == "hf-cache"
    assert resolved.revision_or_hash == commit


def test_gguf_is_converted_once_under_a_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gguf = tmp_path / "toy.gguf"
    gguf.write_bytes(b"GGUF" + bytes(range(256)))
    calls: list[Path] = []

    def fake_convert(src: Path, target: Path, sha256: str) -> None:
        calls.append(target)
        time.sleep(0.2)  # long enough for the other thread to hit the lock
        (target / "config.json").write_text("{}")
        (target / CONVERSION_MARKER).write_text(sha256)

    monkeypatch.setattr(resolution, "_convert_gguf_to_folder", fake_convert)
    cache = tmp_path / "cache"
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(resolve_model(str(gguf), cache))) for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert results[0] == results[1]
    resolved = results[0]
    assert resolved.source.startswith("gguf:") and resolved.path.name.startswith("toy-")
    assert (resolved.path / "config.json").is_file()
    assert not [p for p in cache.iterdir() if ".tmp-" in p.name]  # temp dir renamed away
    assert resolve_model(str(gguf), cache) == resolved
    assert len(calls) == 1


def test_failed_conversion_leaves_no_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gguf = tmp_path / "bad.gguf"
    gguf.write_bytes(b"not really gguf")

    def broken(src: Path, target: Path, sha256: str) -> None:
        (target / "half-written").write_text("x")
        raise ValueError("corrupt gguf")

    monkeypatch.setattr(resolution, "_convert_gguf_to_folder", broken)
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match="corrupt"):
        resolve_model(str(gguf), cache)
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == []


# ---------------------------------------------------------- batching front


class FakeGenerator:
    """Echoes prompts; records every batch. Raises ``error`` when set."""

    options = GeneratorOptions(max_batch_size=16, batch_wait_ms=5)

    def __init__(self, delay_s: float = 0.05, error: BaseException | None = None) -> None:
        self.batches: list[list[str]] = []
        self.delay_s = delay_s
        self.error = error
        self.lock = threading.Lock()

    def generate(self, requests: Sequence[DecodeRequest]) -> list[GenerationOutput]:
        prompts = [r.prompt or "" for r in requests]
        with self.lock:
            self.batches.append(prompts)
        time.sleep(self.delay_s)
        if self.error is not None:
            raise self.error
        if "bad" in prompts:
            raise InputError("bad prompt")
        return [GenerationOutput(p.upper(), [p.upper()], "stop", 1, 1, self.delay_s * 1000) for p in prompts]

    def info(self) -> dict[str, object]:
        return {"id": "fake"}


def test_submissions_within_the_wait_share_one_call() -> None:
    fake = FakeGenerator()
    with BatchingGenerator(fake, batch_wait_ms=300) as front:
        futures = [front.submit(DecodeRequest(prompt=f"p{i}")) for i in range(8)]
        results = [f.result(timeout=5) for f in futures]
    assert fake.batches == [[f"p{i}" for i in range(8)]]
    assert front.calls == 1
    assert [r.text for r in results] == [f"P{i}" for i in range(8)]
    assert all(r.queue_ms >= 0 for r in results)


def test_concurrent_threads_are_grouped() -> None:
    fake = FakeGenerator(delay_s=0.1)
    barrier = threading.Barrier(12)
    results: dict[int, str] = {}

    def job(i: int) -> None:
        barrier.wait()
        results[i] = front.submit(DecodeRequest(prompt=f"p{i}")).result(timeout=10).text

    with BatchingGenerator(fake, batch_wait_ms=50) as front:
        threads = [threading.Thread(target=job, args=(i,)) for i in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert results == {i: f"P{i}" for i in range(12)}
    assert len(fake.batches) <= 3  # 12 jobs, far fewer calls
    assert max(len(b) for b in fake.batches) >= 4


def test_max_batch_size_counts_sample_rows() -> None:
    fake = FakeGenerator()
    with BatchingGenerator(fake, max_batch_size=4, batch_wait_ms=300) as front:
        many = DecodeRequest(prompt="k3", num_return_sequences=3)
        futures = [front.submit(DecodeRequest(prompt=f"p{i}")) for i in range(6)]
        futures.append(front.submit(many))
        for f in futures:
            f.result(timeout=5)
    # p4, p5 and k3's three rows would be 5 > 4: k3 starts the next batch.
    assert fake.batches == [["p0", "p1", "p2", "p3"], ["p4", "p5"], ["k3"]]


def test_queue_wait_is_reported() -> None:
    fake = FakeGenerator(delay_s=0.2)
    with BatchingGenerator(fake, max_batch_size=1, batch_wait_ms=0) as front:
        first = front.submit(DecodeRequest(prompt="a"))
        second = front.submit(DecodeRequest(prompt="b"))
        assert first.result(timeout=5).queue_ms < 100
        assert second.result(timeout=5).queue_ms >= 150  # waited for the first batch


def test_error_reaches_every_future() -> None:
    boom = RuntimeError("model exploded")
    fake = FakeGenerator(error=boom)
    with BatchingGenerator(fake, batch_wait_ms=300) as front:
        futures = [front.submit(DecodeRequest(prompt=f"p{i}")) for i in range(4)]
        for f in futures:
            assert f.exception(timeout=5) is boom
    assert front.calls == 1  # no retries for errors that are not the request's fault


def test_input_error_fails_only_its_request() -> None:
    fake = FakeGenerator(delay_s=0.01)
    with BatchingGenerator(fake, batch_wait_ms=300) as front:
        futures = [front.submit(DecodeRequest(prompt=p)) for p in ("a", "bad", "c")]
        assert futures[0].result(timeout=5).text == "A"
        assert isinstance(futures[1].exception(timeout=5), InputError)
        assert futures[2].result(timeout=5).text == "C"
    assert fake.batches[0] == ["a", "bad", "c"]
    assert sorted(map(tuple, fake.batches[1:])) == [("a",), ("bad",), ("c",)]


def test_close_serves_queued_requests_then_refuses() -> None:
    fake = FakeGenerator()
    front = BatchingGenerator(fake, batch_wait_ms=50)
    futures = [front.submit(DecodeRequest(prompt=f"p{i}")) for i in range(3)]
    front.close()
    assert [f.result(timeout=0).text for f in futures] == ["P0", "P1", "P2"]
    with pytest.raises(RuntimeError, match="closed"):
        front.submit(DecodeRequest(prompt="late"))


def test_batching_front_over_the_real_decode_loop(gen: Generator) -> None:
    requests = [req(p, max_new_tokens=n) for p, n in zip(PROMPTS * 2, [3, 6, 9, 4, 8, 12], strict=True)]
    expected = [solo(gen, r).text for r in requests]
    with BatchingGenerator(gen, batch_wait_ms=200) as front:
        outs = front.generate(requests)
    assert [o.text for o in outs] == expected
    assert front.calls == 1
    assert all(o.batch_rows == 6 for o in outs)
    assert front.info()["batching"]["max_batch_size"] == 16


def test_get_generator_loads_once_per_key(monkeypatch: pytest.MonkeyPatch) -> None:
    loads: list[str] = []

    def fake_load(self: Generator) -> Generator:
        loads.append(self.model_id)
        return self

    monkeypatch.setattr(Generator, "load", fake_load)
    # A registry of its own: swapped, not cleared, so a session-wide app keeps its models.
    monkeypatch.setattr(model_registry, "_REGISTRY", model_registry.ModelRegistry())
    a = get_generator("some-model")
    assert get_generator("some-model") is a
    b = get_generator("some-model", GeneratorOptions(dtype="bf16"))
    assert b is not a
    assert loads == ["some-model", "some-model"]
    assert sum(k.startswith("generator:some-model:") for k in registry().loaded_keys()) == 2
    a.close()
    b.close()
