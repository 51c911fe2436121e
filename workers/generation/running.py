"""A running decode batch that rows join and leave between steps (continuous batching).

Layout: every row's next token sits in the last column. A row joins by a
prefill of its own (left-padded with the other newcomers) whose KV cache is
then left-padded, or the running one is, to a common length and concatenated
along the batch; the attention mask hides every pad and position ids count each
row's real tokens only, so a row computes what it would compute alone (up to
floating-point effects of the batch shape). Finished rows leave at once, and
columns that no remaining row attends to are cut from the left, so a long row
does not keep paying for short rows that already left.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from workers.generation.loading import Loaded, forward_last_logits
from workers.generation.sampling import Row, Sampler


def _left_pad(t: torch.Tensor, n: int, dim: int) -> torch.Tensor:
    """``t`` with ``n`` zero columns prepended along ``dim`` (-2 for KV tensors, -1 for masks)."""
    if n == 0:
        return t
    shape = list(t.shape)
    shape[dim] = n
    return torch.cat([t.new_zeros(shape), t], dim=dim)


def left_padded(rows: Sequence[Row], pad_id: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Prompts left-padded to one width: (input ids, attention mask, position ids counting real tokens)."""
    width = max(len(r.prompt_ids) for r in rows)
    ids = [[pad_id] * (width - len(r.prompt_ids)) + r.prompt_ids for r in rows]
    mask = [[0] * (width - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in rows]
    input_ids = torch.tensor(ids, device=device)
    attention = torch.tensor(mask, device=device)
    return input_ids, attention, (attention.cumsum(-1) - 1).clamp(min=0)


class RunningBatch:
    """Rows decoding together over one dynamic KV cache; ``admit`` and ``step`` run on one thread."""

    def __init__(self, state: Loaded, *, prune: bool = True) -> None:
        self.state = state
        self.prune = prune
        """Drop finished rows from the cache at once (always, for continuous batching)."""
        self.rows: list[Row] = []
        self._done: list[bool] = []
        self._cache: Any = None
        self._attention: torch.Tensor | None = None  # [B, L]: 1 where a row attends
        self._next_pos: torch.Tensor | None = None  # [B, 1]: each row's next position id
        self._sampler: Sampler | None = None
        self._logits: torch.Tensor | None = None  # [B, V]: what each row picks from next

    def __len__(self) -> int:
        """Rows still decoding."""
        return self._done.count(False)

    @property
    def width(self) -> int:
        """Columns of the KV cache (what each forward pass attends over)."""
        return 0 if self._attention is None else int(self._attention.shape[1])

    @torch.inference_mode()
    def admit(self, rows: Sequence[Row]) -> None:
        """Prefill ``rows`` together and add them; they pick their first token at the next ``step``."""
        if not rows:
            return
        from transformers import DynamicCache

        s = self.state
        input_ids, attention, positions = left_padded(rows, s.pad_id, s.device)
        width = int(attention.shape[1])
        cache: Any = DynamicCache(config=s.model.config)
        logits = forward_last_logits(s.model, s.cache_kwarg, input_ids, attention, positions, cache)
        sampler = Sampler.build(rows, int(s.model.config.vocab_size), s.device)
        next_pos = positions[:, -1:] + 1
        if not self.rows:
            self._cache, self._attention, self._next_pos = cache, attention, next_pos
            self._sampler, self._logits = sampler, logits
        else:
            assert self._attention is not None and self._next_pos is not None
            assert self._sampler is not None and self._logits is not None
            length = max(self.width, width)
            old_pad, new_pad = length - self.width, length - width
            for old, new in zip(self._cache.layers, cache.layers, strict=True):
                old.keys = torch.cat([_left_pad(old.keys, old_pad, -2), _left_pad(new.keys, new_pad, -2)])
                old.values = torch.cat(
                    [_left_pad(old.values, old_pad, -2), _left_pad(new.values, new_pad, -2)]
                )
            self._attention = torch.cat(
                [_left_pad(self._attention, old_pad, -1), _left_pad(attention, new_pad, -1)]
            )
            self._next_pos = torch.cat([self._next_pos, next_pos])
            self._sampler = self._sampler.extend(sampler)
            self._logits = torch.cat([self._logits, logits])
        self.rows.extend(rows)
        self._done.extend([False] * len(rows))

    @torch.inference_mode()
    def step(self) -> list[Row]:
        """Pick one token per row, then run the next forward pass; returns the rows that finished."""
        if not len(self):
            return []
        assert self._sampler is not None and self._logits is not None
        assert self._attention is not None and self._next_pos is not None
        s = self.state
        tokens = self._sampler.next_tokens(self._logits)
        self._sampler.observe(tokens)
        finished: list[Row] = []
        for i, (row, token) in enumerate(zip(self.rows, tokens.tolist(), strict=True)):
            if self._done[i]:  # kept without pruning: its tokens are ignored
                continue
            if row.cancelled() or row.advance(token, s.eos_ids, s.tokenizer):
                self._done[i] = True
                finished.append(row)
            row.publish(s.tokenizer)
        if not len(self):
            self._reset()
            return finished
        if finished and self.prune:
            keep = [i for i, done in enumerate(self._done) if not done]
            idx = torch.tensor(keep, device=s.device)
            # An index_select per layer: it pays off once rows run for different lengths.
            self._cache.batch_select_indices(idx)
            self._attention, self._next_pos, tokens = self._attention[idx], self._next_pos[idx], tokens[idx]
            self._sampler = self._sampler.select(idx, keep)
            self.rows = [self.rows[i] for i in keep]
            self._done = [False] * len(keep)
            self._trim()
        ones = torch.ones(len(self.rows), 1, dtype=self._attention.dtype, device=s.device)
        self._attention = torch.cat([self._attention, ones], dim=-1)
        self._logits = forward_last_logits(
            s.model, s.cache_kwarg, tokens[:, None], self._attention, self._next_pos, self._cache
        )
        self._next_pos = self._next_pos + 1
        return finished

    def _trim(self) -> None:
        """Cut leading columns that no row attends to (pads of rows that have left)."""
        assert self._attention is not None
        used = self._attention.any(dim=0)
        first = int(used.to(torch.int8).argmax())
        if first == 0:
            return
        self._attention = self._attention[:, first:]
        for layer in self._cache.layers:
            layer.keys = layer.keys[..., first:, :]
            layer.values = layer.values[..., first:, :]

    def _reset(self) -> None:
        self.rows, self._done = [], []
        self._cache = self._attention = self._next_pos = self._sampler = self._logits = None
