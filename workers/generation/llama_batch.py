"""Continuous batching on llama.cpp: many sequences in one ``llama_decode`` per step.

:class:`LlamaRunningBatch` gives the llama.cpp engine the interface
:class:`~workers.generation.continuous.ContinuousBatcher` drives
(``admit``, ``step``, ``len``), so a job that arrives mid-decode joins at the
next step and a finished one leaves at once, as on the transformers engine.

One step is one ``llama_decode`` over a ``llama_batch`` that holds, for every
decoding row, the token it picked last step, and then chunks of newcomers'
prompts up to ``n_batch`` tokens (chunked prefill: a long prompt does not stall
the decoding rows for its whole length). Each row is its own llama.cpp sequence
with its own sampler chain (``_sampler_chain``: HF's processor order, seeded
``seed + i``) and samples from its own logits (``llama_sampler_sample`` at its
index in the batch). A finished row's cells leave the KV cache
(``llama_memory_seq_rm``) and its sequence id is reused.

The KV cache is unified (every sequence draws cells from one pool of ``n_ctx``),
so a lone row may use the model's whole context. A row reserves its prompt plus
its token budget when it starts; a row that does not fit beside the running ones
waits (in ``len``, not yet decoding) until enough cells are free, so a decode
never runs out of cache mid-way. A row alone always fits: its budget was cut to
the context when it was made.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from workers.generation.sampling import Row


@dataclass
class LlamaContext:
    """A llama.cpp context of its own for batched decoding, and its reusable batch.

    It lives as long as its generator, which the model registry keeps for the process.
    """

    lib: Any
    ctx: Any
    memory: Any
    batch: Any
    n_ctx: int
    """Cells of the unified KV cache, shared by every sequence."""
    n_seq: int
    """Sequences (rows) that can decode at once."""
    n_batch: int
    """Most tokens one ``llama_decode`` takes."""

    @classmethod
    def open(
        cls, lib: Any, model: Any, *, n_ctx: int, n_seq: int, n_batch: int, threads: int
    ) -> LlamaContext:
        params = lib.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = params.n_ubatch = n_batch
        params.n_seq_max = n_seq
        params.n_threads = params.n_threads_batch = threads
        # One pool of cells for every sequence: a non-unified cache splits n_ctx per
        # sequence and only batches sequences with consecutive ids and equal lengths.
        params.kv_unified = True
        params.no_perf = True
        ctx = lib.llama_init_from_model(model, params)
        if not ctx:
            raise RuntimeError(f"llama.cpp could not create a context (n_ctx={n_ctx}, n_seq={n_seq})")
        batch = lib.llama_batch_init(n_batch, 0, 1)
        return cls(
            lib=lib, ctx=ctx, memory=lib.llama_get_memory(ctx), batch=batch, n_ctx=int(lib.llama_n_ctx(ctx)),
            n_seq=n_seq, n_batch=n_batch,
        )  # fmt: skip


@dataclass
class _Live:
    """A row that holds a llama.cpp sequence."""

    row: Row
    seq: int
    chain: Any
    reserved: int
    fed: int = 0
    """Prompt tokens already in the KV cache."""
    logits_at: int = -1
    """Batch index of this row's logits after the last decode; -1 when it has none to sample."""

    @property
    def prefilled(self) -> bool:
        return self.fed == len(self.row.prompt_ids)


class LlamaRunningBatch:
    """Rows decoding together on one llama.cpp context; ``admit`` and ``step`` run on one thread."""

    def __init__(self, context: LlamaContext, chain: Any, eog: frozenset[int], detok: Any) -> None:
        self.c = context
        self._chain = chain
        """``Row -> sampler chain``: the engine's chain for a row's parameters."""
        self._eog = eog
        self._detok = detok
        self._live: list[_Live] = []
        self.closed = False
        # A batch starts on an empty cache (a batch before it may have failed mid-step).
        self.reset()

    def __len__(self) -> int:
        """Rows admitted and not finished (decoding, or waiting for cache cells)."""
        return len(self._waiting) + len(self._live)

    @property
    def decoding(self) -> int:
        """Rows that hold a sequence (the rest wait for cache cells or a free sequence)."""
        return len(self._live)

    def admit(self, rows: Sequence[Row]) -> None:
        """Queue ``rows``; each starts (prefills) at the next step that has room for it."""
        if self.closed:
            raise RuntimeError("LlamaRunningBatch used after close()")
        self._waiting.extend(rows)

    def step(self) -> list[Row]:
        """Sample every row that has logits, then one ``llama_decode``; returns the rows that finished."""
        if self.closed:
            raise RuntimeError("LlamaRunningBatch used after close()")
        c, lib = self.c, self.c.lib
        finished: list[Row] = []
        feed: list[tuple[_Live, int, int, bool]] = []  # (row, token, position, wants logits)
        for live in list(self._live):
            if live.row.cancelled():
                self._leave(live, finished)
                continue
            if live.logits_at < 0:  # still prefilling
                continue
            token = int(lib.llama_sampler_sample(live.chain, c.ctx, live.logits_at))
            live.logits_at = -1
            done = live.row.advance(token, self._eog, self._detok)
            live.row.publish(self._detok)
            if done:
                self._leave(live, finished)
            else:
                # Generated token k sits at position len(prompt) + k.
                feed.append((live, token, len(live.row.prompt_ids) + len(live.row.tokens) - 1, True))
        self._start_waiting(finished)
        room = c.n_batch - len(feed)
        for live in self._live:
            if room <= 0:
                break
            if live.prefilled:
                continue
            ids = live.row.prompt_ids
            take = min(room, len(ids) - live.fed)
            for k in range(live.fed, live.fed + take):
                feed.append((live, ids[k], k, k == len(ids) - 1))
            live.fed += take
            room -= take
        if feed:
            self._decode(feed)
        return finished

    def reset(self) -> None:
        """Drop every row (their sampler chains and sequences): an empty batch on an empty cache."""
        for live in self._live:
            self.c.lib.llama_sampler_free(live.chain)
        self._live, self._reserved = [], 0
        self._waiting: deque[Row] = deque()
        self._free_seqs = list(range(self.c.n_seq - 1, -1, -1))
        self.c.lib.llama_memory_clear(self.c.memory, True)

    def close(self) -> None:
        """``reset``, and the batch refuses any later use (a newer batch owns the context)."""
        if not self.closed:
            self.reset()
            self.closed = True

    # ----------------------------------------------------------------- internals

    def _start_waiting(self, finished: list[Row]) -> None:
        """Give waiting rows a sequence, in arrival order, while the cache has cells for them."""
        while self._waiting and self._free_seqs:
            row = self._waiting[0]
            if row.cancelled():  # cancelled before it started
                self._waiting.popleft()
                row.publish(self._detok)
                finished.append(row)
                continue
            need = len(row.prompt_ids) + row.max_new_tokens
            if self._live and self._reserved + need > self.c.n_ctx:
                break  # in order: a big row is not overtaken forever by small ones
            self._waiting.popleft()
            chain = self._chain(row)
            for token in row.prompt_ids:  # the repetition penalty counts the prompt, as HF's does
                self.c.lib.llama_sampler_accept(chain, token)
            self._live.append(_Live(row, self._free_seqs.pop(), chain, need))
            self._reserved += need

    def _leave(self, live: _Live, finished: list[Row]) -> None:
        lib = self.c.lib
        lib.llama_memory_seq_rm(self.c.memory, live.seq, -1, -1)
        lib.llama_sampler_free(live.chain)
        self._free_seqs.append(live.seq)
        self._reserved -= live.reserved
        self._live.remove(live)
        if live.row.finish_reason == "cancelled":
            live.row.publish(self._detok)
        finished.append(live.row)

    def _decode(self, feed: list[tuple[_Live, int, int, bool]]) -> None:
        b = self.c.batch
        for i, (live, token, pos, logits) in enumerate(feed):
            b.token[i] = token
            b.pos[i] = pos
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = live.seq
            b.logits[i] = logits
        b.n_tokens = len(feed)
        rc = int(self.c.lib.llama_decode(self.c.ctx, b))
        if rc != 0:
            # 1: no cache slot (the reservations should prevent it); <0: a bad batch or a fault.
            raise RuntimeError(f"llama_decode returned {rc} for a batch of {len(feed)} tokens")
        for i, (live, _token, _pos, logits) in enumerate(feed):
            if logits:
                live.logits_at = i
