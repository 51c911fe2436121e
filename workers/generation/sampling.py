"""Per-row decoding state and sampling: every row of a batch keeps its own parameters.

A :class:`Row` is one sequence being decoded (a request, or one sample of it)
with its stop strings and length limit; the :class:`Sampler` holds every row's
sampling parameters as tensors along the batch dimension and picks one token
per row in HF's processor order.

Reproducibility: a row with a seed samples from its own ``torch.Generator``, so
its random stream does not depend on its neighbours. Run alone, the same seed
gives the same text. In a batch, left padding and a different batch shape can
change the floating-point results of the forward pass slightly, which can flip
a near-tie and so change the text.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from evaluators.contracts import SamplingParams
from evaluators.errors import InputError
from workers.generation.options import DecodeRequest, FinishReason, GenerationOutput

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass
class Row:
    """One sequence being decoded: a request, or one sample of it."""

    request_index: int
    sample_index: int
    prompt_ids: list[int]
    params: SamplingParams
    max_new_tokens: int
    generator: torch.Generator | None
    ignore_eos: bool = False
    tokens: list[int] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    stop_text: str | None = None
    """The text cut before a stop sequence, once one was found."""
    searched_chars: int = 0
    """Decoded characters already searched for stop sequences."""
    on_text: Callable[[str], None] | None = None
    """Receives the row's text as it becomes final (see ``DecodeRequest.on_text``)."""
    cancel: threading.Event | None = None
    emitted_chars: int = 0
    """Characters of the text already handed to ``on_text``."""

    def advance(self, token: int, eos_ids: frozenset[int], tokenizer: PreTrainedTokenizerBase) -> bool:
        """Append ``token``; True once the row is finished (EOS, a stop sequence or its length)."""
        self.tokens.append(token)
        if token in eos_ids and not self.ignore_eos:
            self.finish_reason = "stop"
        elif self.params.stop and self._hit_stop(tokenizer):
            self.finish_reason = "stop_sequence"
        elif len(self.tokens) >= self.max_new_tokens:
            self.finish_reason = "length"
        return self.finish_reason is not None

    def cancelled(self) -> bool:
        """Stop this row when its request was cancelled; True when it was."""
        if self.cancel is not None and self.cancel.is_set() and self.finish_reason is None:
            self.finish_reason = "cancelled"
        return self.finish_reason == "cancelled"

    def publish(self, tokenizer: PreTrainedTokenizerBase) -> None:
        """Hand ``on_text`` the text that can no longer change.

        While decoding: up to the last whitespace, holding back an incomplete
        character and anything a stop sequence could still claim. Once finished:
        the rest of the final text, so the pieces add up to ``text()``.
        """
        if self.on_text is None:
            return
        if self.finish_reason is not None:
            final = self.text(tokenizer)
            end = len(final)
        else:
            final = str(tokenizer.decode(self.tokens, skip_special_tokens=True)).rstrip("\ufffd")
            if self.params.stop:
                final = final[: max(0, len(final) - max(len(s) for s in self.params.stop) + 1)]
            end = max(final.rfind(" "), final.rfind("\n"))
        if end > self.emitted_chars:
            piece = final[self.emitted_chars : end]
            self.emitted_chars = end
            self.on_text(piece)

    def text(self, tokenizer: PreTrainedTokenizerBase) -> str:
        if self.stop_text is not None:
            return self.stop_text
        return str(tokenizer.decode(self.tokens, skip_special_tokens=True))

    def _hit_stop(self, tokenizer: PreTrainedTokenizerBase) -> bool:
        """Search the newly decoded text for the row's stop sequences."""
        text = str(tokenizer.decode(self.tokens, skip_special_tokens=True))
        # Only the tail can hold a new match: a stop string may straddle the old end.
        longest = max(len(s) for s in self.params.stop)
        start = max(0, self.searched_chars - longest + 1)
        hits = [i for s in self.params.stop if (i := text.find(s, start)) >= 0]
        # A trailing U+FFFD is an incomplete UTF-8 sequence; search it again next time.
        self.searched_chars = len(text.rstrip("\ufffd"))
        if not hits:
            return False
        self.stop_text = text[: min(hits)]
        return True


def request_rows(
    request: DecodeRequest,
    ids: list[int],
    context: int,
    index: int,
    sample: Callable[[int], tuple[SamplingParams, torch.Generator | None]],
) -> list[Row]:
    """The rows of ``request``, one per sample; ``sample(k)`` gives sample k's parameters and generator.

    Raises InputError (with ``request_index=index``) for a prompt the context cannot take; the
    token budget is cut to what fits beside the prompt.
    """
    if len(ids) >= context:
        raise InputError(
            f"prompt has {len(ids)} tokens; the model's context is {context}", request_index=index
        )
    budget = min(request.params.max_new_tokens, context - len(ids))
    rows = []
    for k in range(request.num_return_sequences):
        params, generator = sample(k)
        # Only the first sample streams; every sample of a cancelled request stops.
        on_text = request.on_text if k == 0 else None
        rows.append(
            Row(
                index, k, ids, params, budget, generator, ignore_eos=request.ignore_eos, on_text=on_text,
                cancel=request.cancel,
            )
        )  # fmt: skip
    return rows


def request_output(
    rows: Sequence[Row], tokenizer: PreTrainedTokenizerBase, prompt_tokens: int, spent_ms: float, peers: int
) -> GenerationOutput:
    """One request's output from its finished rows (sample 0 first), on either engine."""
    mine = sorted(rows, key=lambda r: r.sample_index)
    texts = [r.text(tokenizer) for r in mine]
    reasons: list[FinishReason] = [r.finish_reason or "length" for r in mine]
    return GenerationOutput(
        text=texts[0],
        samples=texts,
        finish_reason=reasons[0],
        prompt_tokens=prompt_tokens,
        completion_tokens=sum(len(r.tokens) for r in mine),
        generate_ms=round(spent_ms, 2),
        batch_rows=max(peers, 1),
        sample_finish_reasons=reasons,
    )


@dataclass
class Sampler:
    """Per-row sampling parameters as tensors aligned with the batch dimension."""

    temperature: torch.Tensor  # [B] float, 0 = greedy
    top_k: torch.Tensor  # [B] long, vocab size when disabled
    top_p: torch.Tensor  # [B] float
    penalty: torch.Tensor | None  # [B] float, None when no row uses one
    seen: torch.Tensor | None  # [B, V] bool: tokens in the row so far (for the penalty)
    generators: list[torch.Generator | None]

    @classmethod
    def build(cls, rows: Sequence[Row], vocab: int, device: torch.device) -> Sampler:
        p = [r.params for r in rows]
        penalty = seen = None
        if any(x.repetition_penalty != 1.0 for x in p):
            penalty = torch.tensor([x.repetition_penalty for x in p], device=device)
            seen = torch.zeros(len(rows), vocab, dtype=torch.bool, device=device)
            for i, r in enumerate(rows):
                seen[i, torch.tensor(sorted(set(r.prompt_ids)), device=device)] = True
        return cls(
            temperature=torch.tensor([x.temperature for x in p], device=device),
            top_k=torch.tensor([x.top_k if 0 < x.top_k < vocab else vocab for x in p], device=device),
            top_p=torch.tensor([x.top_p for x in p], device=device),
            penalty=penalty,
            seen=seen,
            generators=[r.generator for r in rows],
        )

    def select(self, idx: torch.Tensor, keep: list[int]) -> Sampler:
        """The sampler for the rows at batch positions ``keep`` (``idx`` as a tensor)."""
        return Sampler(
            temperature=self.temperature[idx],
            top_k=self.top_k[idx],
            top_p=self.top_p[idx],
            penalty=None if self.penalty is None else self.penalty[idx],
            seen=None if self.seen is None else self.seen[idx],
            generators=[self.generators[j] for j in keep],
        )

    def extend(self, other: Sampler) -> Sampler:
        """This sampler's rows followed by ``other``'s (rows joining a running batch)."""
        penalty = seen = None
        if self.penalty is not None or other.penalty is not None:
            # A side without a penalty gets 1.0, which leaves its logits as they are.
            parts = [(x.penalty, x.seen, len(x.generators)) for x in (self, other)]
            vocab = next(s.shape[1] for _, s, _ in parts if s is not None)
            device = self.temperature.device
            penalty = torch.cat([p if p is not None else torch.ones(n, device=device) for p, _, n in parts])
            blank = [torch.zeros(n, vocab, dtype=torch.bool, device=device) for _, _, n in parts]
            seen = torch.cat([s if s is not None else b for (_, s, _), b in zip(parts, blank, strict=True)])
        return Sampler(
            temperature=torch.cat([self.temperature, other.temperature]),
            top_k=torch.cat([self.top_k, other.top_k]),
            top_p=torch.cat([self.top_p, other.top_p]),
            penalty=penalty,
            seen=seen,
            generators=[*self.generators, *other.generators],
        )

    def next_tokens(self, logits: torch.Tensor) -> torch.Tensor:
        """Pick one token per row.

        Processors run in HF's order: repetition penalty, temperature, top-k, top-p.
        Greedy rows take the argmax after the penalty, as HF does.
        """
        logits = logits.float()
        if self.penalty is not None and self.seen is not None:
            p = self.penalty[:, None]
            penalized = torch.where(logits < 0, logits * p, logits / p)
            logits = torch.where(self.seen, penalized, logits)
        tokens = logits.argmax(dim=-1)
        sampling = (self.temperature > 0).nonzero().flatten()
        if sampling.numel() == 0:
            return tokens

        scaled = logits[sampling] / self.temperature[sampling, None]
        k = self.top_k[sampling]
        # topk over the largest k any row needs is far cheaper than a full sort of
        # the vocabulary; both give candidates in descending order.
        k_max = int(k.max())
        if k_max < scaled.shape[-1]:
            values, index = scaled.topk(k_max, dim=-1)
        else:
            values, index = scaled.sort(dim=-1, descending=True)
        rank = torch.arange(values.shape[-1], device=values.device)
        values = values.masked_fill(rank[None, :] >= k[:, None], float("-inf"))
        probs = values.softmax(dim=-1)
        # Drop a candidate when the mass ranked above it already reaches top_p (the
        # same set as HF's TopPLogitsWarper); the first candidate always stays.
        mass_before = probs.cumsum(dim=-1) - probs
        drop = (mass_before >= self.top_p[sampling, None]) & (rank[None, :] > 0)
        values = values.masked_fill(drop, float("-inf"))
        probs = values.softmax(dim=-1)

        picks = torch.empty(len(sampling), dtype=torch.long, device=values.device)
        for j, (row, own_k) in enumerate(zip(sampling.tolist(), k.tolist(), strict=True)):
            # One draw per row from the row's own generator, over the row's own k
            # candidates: neither its neighbours' random numbers nor their top_k
            # (the width of this tensor) change what a seeded row picks.
            picks[j] = torch.multinomial(probs[j, :own_k], 1, generator=self.generators[row])[0]
        tokens[sampling] = index.gather(1, picks[:, None]).squeeze(1)
        return tokens

    def observe(self, tokens: torch.Tensor) -> None:
        """Mark the picked tokens as seen (for the repetition penalty)."""
        if self.seen is not None:
            self.seen[torch.arange(len(tokens), device=tokens.device), tokens] = True
