"""The generator: a causal LM with one batched decode loop for many requests.

Every row of the batch keeps its own sampling parameters, stop sequences,
length limit and random generator (see ``sampling``), so unrelated requests
share each forward pass.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from evaluators.contracts import SamplingParams
from evaluators.errors import InputError
from workers.generation.loading import Loaded, forward_last_logits, load_model, prepare
from workers.generation.options import DecodeRequest, GenerationOutput, GeneratorOptions
from workers.generation.resolve import DEFAULT_MODEL_ID, ResolvedModel
from workers.generation.running import RunningBatch, left_padded
from workers.generation.sampling import Row, Sampler, request_output, request_rows

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


class Generator:
    """A causal LM with a batched, per-row-parameter decode loop.

    ``load`` is lazy, idempotent and thread-safe; ``generate`` runs one call at a
    time (a second caller waits), which is what ``BatchingGenerator`` feeds.
    """

    def __init__(
        self,
        model_id: str = DEFAULT_MODEL_ID,
        options: GeneratorOptions | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        self.model_id = model_id
        self.options = options or GeneratorOptions()
        self._cache_dir = cache_dir
        self._loaded: Loaded | None = None
        self._load_lock = threading.Lock()
        self._generate_lock = threading.Lock()
        _instances.add(self)

    # ----------------------------------------------------------------- loading

    @property
    def cache_dir(self) -> Path:
        if self._cache_dir is None:
            from evaluators.settings import evaluator_settings

            self._cache_dir = evaluator_settings().model_dir
        return self._cache_dir

    @classmethod
    def from_model(
        cls,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        options: GeneratorOptions | None = None,
        model_id: str = "in-memory",
    ) -> Generator:
        """Wrap an already loaded model (tests, benchmarks); options only steer decoding."""
        gen = cls(model_id, options)
        resolved = ResolvedModel(model_id, Path("."), "in-memory", "")
        device = next(model.parameters()).device
        gen._loaded = prepare(resolved, model.eval(), tokenizer, device, model.dtype, {}, gen.options)
        return gen

    def load(self) -> Generator:
        """Resolve, load and optimize the model once; later calls return at once."""
        if self._loaded is not None:
            return self
        with self._load_lock:
            if self._loaded is None:
                self._loaded = load_model(self.model_id, self.options, self.cache_dir)
        return self

    @property
    def loaded(self) -> bool:
        return self._loaded is not None

    @property
    def model(self) -> PreTrainedModel:
        return self._state().model

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self._state().tokenizer

    def _state(self) -> Loaded:
        self.load()
        assert self._loaded is not None
        return self._loaded

    def info(self) -> dict[str, Any]:
        """The model block for reports: what runs, from where, and how."""
        if self._loaded is None:
            options = dataclasses.asdict(self.options)
            return {"id": self.model_id, "loaded": False, "options": options}
        s = self._loaded
        import transformers

        return {
            "id": s.resolved.model_id,
            "requested_id": self.model_id,
            "loaded": True,
            "source": s.resolved.source,
            "revision": s.resolved.revision_or_hash,
            "path": str(s.resolved.path),
            "dtype": str(s.dtype).removeprefix("torch."),
            "device": str(s.device),
            "optimizations": dict(s.optimizations),
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        }

    # ------------------------------------------------------------- generation

    def encode(self, request: DecodeRequest) -> list[int]:
        """Token ids of the prompt, chat template applied where it belongs."""
        tok = self._state().tokenizer
        messages = request.chat()
        if messages is None and not request.raw_prompt and tok.chat_template:
            messages = [{"role": "user", "content": request.prompt or ""}]
        if messages is not None:
            if not tok.chat_template:
                raise InputError(f"model {self.model_id} has no chat template; send a prompt instead")
            # Render to text, then encode without extra specials: the template has them.
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            ids = tok(str(text), add_special_tokens=False)["input_ids"]
        else:
            ids = tok(request.prompt or "")["input_ids"]
        if not ids:
            raise InputError("the prompt encodes to no tokens")
        return list(ids)

    def generate(self, requests: Sequence[DecodeRequest]) -> list[GenerationOutput]:
        """Decode all requests, batching rows (samples) up to ``max_batch_size`` per pass."""
        if not requests:
            return []
        state = self._state()
        # One call at a time: the decode loop owns the model, and a fast tokenizer
        # used from two threads at once can fail with "Already borrowed".
        with self._generate_lock:
            return self._generate(state, requests)

    def rows_for(self, request: DecodeRequest, index: int = 0) -> tuple[list[Row], int]:
        """The batch rows of ``request`` (one per sample) and its prompt's token count.

        Raises InputError (with ``request_index=index``) for a prompt the model cannot take.
        """
        state = self._state()
        ids = self.encode(request)

        def sample(k: int) -> tuple[SamplingParams, torch.Generator | None]:
            # A seeded sample draws from its own torch generator, seeded seed + k.
            if request.params.seed is None:
                return request.params, None
            gen = torch.Generator(device=state.device)
            gen.manual_seed(request.params.seed + k)
            return request.params, gen

        return request_rows(request, ids, state.max_context, index, sample), len(ids)

    def output(
        self, rows: Sequence[Row], prompt_tokens: int, spent_ms: float, peers: int
    ) -> GenerationOutput:
        """One request's output from its finished rows."""
        return request_output(rows, self._state().tokenizer, prompt_tokens, spent_ms, peers)

    @property
    def continuous(self) -> bool:
        """Whether rows can join a running batch: a dynamic KV cache without sliding-window layers."""
        if self._loaded is None:  # not loaded yet: what the options will give
            return not self.options.compile
        config = self._loaded.model.config
        sliding = getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True)
        return self._loaded.decode_step is None and not sliding

    def running_batch(self) -> RunningBatch:
        """An empty batch over this model, for a scheduler that admits rows between steps."""
        return RunningBatch(self._state())

    @property
    def lock(self) -> threading.Lock:
        """Held while the model runs: a scheduler holds it around each admit and step."""
        return self._generate_lock

    def _generate(self, state: Loaded, requests: Sequence[DecodeRequest]) -> list[GenerationOutput]:
        rows: list[Row] = []
        prompt_tokens: list[int] = []
        for i, req in enumerate(requests):
            mine, n = self.rows_for(req, i)
            rows.extend(mine)
            prompt_tokens.append(n)

        # Similar lengths share a chunk, so chunks carry less left padding.
        order = sorted(range(len(rows)), key=lambda j: len(rows[j].prompt_ids))
        size = self.options.max_batch_size
        spent_ms = [0.0] * len(requests)
        peers = [0] * len(requests)
        for start in range(0, len(order), size):
            chunk = [rows[j] for j in order[start : start + size]]
            t0 = time.perf_counter()
            self._decode(chunk)
            ms = (time.perf_counter() - t0) * 1000
            for req_index in {r.request_index for r in chunk}:
                spent_ms[req_index] += ms
                peers[req_index] = max(peers[req_index], len(chunk))
        return [
            self.output([r for r in rows if r.request_index == i], prompt_tokens[i], spent_ms[i], peers[i])
            for i in range(len(requests))
        ]

    def _decode(self, rows: list[Row]) -> None:
        """Decode ``rows`` (one chunk) to the end, filling their tokens and finish reasons."""
        state = self._loaded
        assert state is not None
        if state.decode_step is not None:
            self._decode_static(state, rows)
            return
        batch = RunningBatch(state, prune=self.options.prune_finished)
        batch.admit(rows)
        while len(batch):
            batch.step()

    @torch.inference_mode()
    def _decode_static(self, state: Loaded, rows: list[Row]) -> None:
        """The compiled decode step over a static KV cache: one fixed-shape batch, no pruning.

        Layout as in ``RunningBatch``: left-padded prompts, the mask hides the pads
        and position ids count real tokens only. A static cache is a fixed
        [B, heads, capacity, dim] buffer: the mask covers the whole capacity, and
        future slots stay 0 until written.
        """
        from transformers import StaticCache

        model, device = state.model, state.device
        input_ids, attention, positions = left_padded(rows, state.pad_id, device)
        width = int(attention.shape[1])
        capacity = width + max(r.max_new_tokens for r in rows)
        capacity = -(-capacity // 64) * 64  # round up: fewer distinct shapes to compile
        cache: Any = StaticCache(config=model.config, max_cache_len=capacity)
        full = torch.zeros(len(rows), capacity, dtype=attention.dtype, device=device)
        full[:, :width] = attention
        attention = full
        step = state.decode_step
        assert step is not None

        sampler = Sampler.build(rows, int(model.config.vocab_size), device)
        done = [False] * len(rows)
        logits = forward_last_logits(model, state.cache_kwarg, input_ids, attention, positions, cache)
        next_pos = positions[:, -1:] + 1
        length = width  # columns written so far
        while True:
            tokens = sampler.next_tokens(logits)
            sampler.observe(tokens)
            for i, (row, token) in enumerate(zip(rows, tokens.tolist(), strict=True)):
                if not done[i]:
                    done[i] = row.cancelled() or row.advance(token, state.eos_ids, state.tokenizer)
                    row.publish(state.tokenizer)
            if all(done):
                return
            attention[:, length] = 1  # in place: the compiled step sees one shape
            logits = step(model, state.cache_kwarg, tokens[:, None], attention, next_pos, cache)
            next_pos = next_pos + 1
            length += 1


# Every generator of the process, so a forked child can replace their locks.
_instances: weakref.WeakSet[Generator] = weakref.WeakSet()


def _reset_locks_after_fork() -> None:
    # A lock held by another thread at fork time would stay held forever in the child.
    for generator in list(_instances):
        generator._load_lock = threading.Lock()
        generator._generate_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_locks_after_fork)
