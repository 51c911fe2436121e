"""Long texts in overlapping windows, for checks whose models read a bounded number of tokens.

A classifier truncates what it cannot read (the abuse classifier reads 256
tokens, the name tagger 128 word pieces), so without windows the end of a long
text would pass unchecked however harmful it is. ``split`` cuts a text into
windows of at most ``size`` characters, at whitespace where it can, each
overlapping the previous one so that an entity on a border is whole in one of
them; ``merge`` folds the windows' findings back into one list for the whole
text: spans shifted to the whole text's offsets (a span seen in two windows
counted once), and a whole-text score taken as its highest window.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from evaluators.findings import Finding, Span


def overlap_for(size: int) -> int:
    """Characters two neighbouring windows share: a long name or an address fits."""
    return min(120, size // 4)


def split(text: str, size: int, overlap: int | None = None) -> list[tuple[int, str]]:
    """``(offset, window)`` pairs covering ``text``; one pair when it fits in ``size``."""
    if size <= 0:
        raise ValueError("size must be positive")
    if len(text) <= size:
        return [(0, text)]
    overlap = overlap_for(size) if overlap is None else overlap
    if not 0 <= overlap < size:
        raise ValueError("overlap must be smaller than size")
    windows: list[tuple[int, str]] = []
    start = 0
    while True:
        end = min(len(text), start + size)
        if end < len(text):
            # Cut after the last whitespace of the window's last quarter, not inside a word.
            low = start + 3 * size // 4
            cut = max(text.rfind(" ", low, end), text.rfind("\n", low, end))
            if cut > start:
                end = cut + 1
        windows.append((start, text[start:end]))
        if end >= len(text):
            return windows
        # The next window starts at least ``overlap`` characters back, at a word start when one is near.
        nxt = max(start + 1, end - overlap)
        low = max(start + 1, end - 2 * overlap)
        space = max(text.rfind(" ", low, nxt), text.rfind("\n", low, nxt))
        start = space + 1 if space > start else nxt


def merge(windows: Sequence[tuple[int, Sequence[Finding]]]) -> list[Finding]:
    """One text's findings from its windows' (offset, findings), in first-seen order."""
    best: dict[tuple[object, ...], Finding] = {}
    for offset, findings in windows:
        for f in findings:
            if f.span is not None:
                span = Span(f.span.start + offset, f.span.end + offset)
                f = dataclasses.replace(f, span=span)
                key: tuple[object, ...] = (f.check, f.label, f.engine, span.start, span.end)
            else:
                key = (f.check, f.label, f.engine)
            kept = best.get(key)
            if kept is None or f.score > kept.score:
                best[key] = f
    return list(best.values())
