"""The hallucination check's evidence: sentences of the documents or samples, and NLI premises.

A premise is a window of whole consecutive sentences that fits the encoder, or the sentences
most like a claim packed together; both keep where each sentence stood, to show it.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from evaluators.embeddings import split_sentences
from evaluators.normalize import normalize


@dataclass(frozen=True)
class Sentence:
    encode: str
    """The normalised sentence, as the models read it."""
    shown: str
    """The sentence as it stands in the document or sample, for ``detail.evidence``."""
    group: int
    """Which document (grounded) or sample (self-consistency) it comes from."""
    start: int = 0
    end: int = 0
    """Offsets of ``shown`` in its document."""


@dataclass(frozen=True)
class Chunk:
    """An NLI premise: sentences (indices into the item's evidence) joined in document order."""

    members: tuple[int, ...]
    encode: str
    shown: str
    group: int


def document_sentences(doc: str, group: int) -> list[Sentence]:
    norm = normalize(doc)
    out = []
    for start, end in split_sentences(norm.text):
        o_start, o_end = norm.to_original(start, end)
        out.append(
            Sentence(
                encode=norm.text[start:end], shown=doc[o_start:o_end], group=group, start=o_start, end=o_end
            )
        )
    return out


def premise(ev: Sequence[Sentence], members: Sequence[int], docs: Sequence[str]) -> Chunk:
    members = sorted(members)
    first = ev[members[0]]
    contiguous = all(b == a + 1 for a, b in itertools.pairwise(members))
    same_doc = all(ev[i].group == first.group for i in members)
    if contiguous and same_doc:
        shown = docs[first.group][first.start : ev[members[-1]].end]
    else:  # sentences from far apart: show them as the model reads them, side by side
        shown = " … ".join(ev[i].shown for i in members)
    return Chunk(tuple(members), " ".join(ev[i].encode for i in members), shown, first.group)


def sentence_windows(lengths: Sequence[int], budget: int) -> list[tuple[int, int]]:
    """Windows ``[start, end)`` over sentences of ``lengths`` word pieces, each at most ``budget``.

    A window takes whole consecutive sentences (one over-long sentence is a window of its own,
    which the tokenizer truncates); the next starts half-way through it, so a fact that a window
    edge cuts is whole in the next window.
    """
    out: list[tuple[int, int]] = []
    start, n = 0, len(lengths)
    while start < n:
        end, total = start + 1, lengths[start]
        while end < n and total + lengths[end] <= budget:
            total += lengths[end]
            end += 1
        out.append((start, end))
        if end >= n:
            break
        start = max(start + 1, (start + end) // 2)
    return out


def evidence_windows(ev: Sequence[Sentence], lengths: Sequence[int], budget: int) -> list[tuple[int, ...]]:
    """The windows of an item's evidence: sentence indices, per document, in order, each at most
    ``budget`` word pieces."""
    out: list[tuple[int, ...]] = []
    start = 0
    while start < len(ev):
        end = start
        while end < len(ev) and ev[end].group == ev[start].group:
            end += 1
        for a, b in sentence_windows(lengths[start:end], budget):
            out.append(tuple(range(start + a, start + b)))
        start = end
    return out
