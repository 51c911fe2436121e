"""Text normalisation that every check runs on, with a map back to the original.

Evasion tricks target the gap between what a person reads and what a model
sees: zero-width characters, full-width or look-alike letters, leetspeak.
``normalize`` closes that gap and keeps, for every character it emits, the
span of the original it came from, so redactions land on the original text.

Two views come out:

* ``text``: NFKC, invisible characters removed, look-alike letters folded in
  mixed-script words. PII and grounding checks read this (digits intact).
* ``folded``: ``text`` with leetspeak folded inside words that mix letters
  with digits or symbols (``1d10t`` -> ``idiot``). Lexical and toxicity
  checks read this. The fold is one character for one, so both views share
  the same offsets.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

# Zero-width and other invisible format characters used to split words.
_INVISIBLE = {
    "\u00ad",  # soft hyphen
    "\u034f",  # combining grapheme joiner
    "\u061c",
    "\u115f",
    "\u1160",
    "\u17b4",
    "\u17b5",
    "\u180e",
    "\u200b",
    "\u200c",
    "\u200d",
    "\u200e",
    "\u200f",
    "\u2060",
    "\u2061",
    "\u2062",
    "\u2063",
    "\u2064",
    "\u206a",
    "\u206b",
    "\u206c",
    "\u206d",
    "\u206e",
    "\u206f",
    "\u3164",
    "\ufeff",
    "\uffa0",
}

# Cyrillic and Greek letters that render like Latin ones (Unicode confusables, abridged).
_CONFUSABLES = {
    "а": "a", "в": "b", "е": "e", "ё": "e", "к": "k", "м": "m", "н": "h", "о": "o",
    "р": "p", "с": "c", "т": "t", "у": "y", "х": "x", "ѕ": "s", "і": "i", "ј": "j",
    "ԁ": "d", "ɡ": "g", "һ": "h", "ӏ": "l", "А": "A", "В": "B", "Е": "E", "К": "K",
    "М": "M", "Н": "H", "О": "O", "Р": "P", "С": "C", "Т": "T", "Х": "X", "У": "Y",
    "І": "I", "Ј": "J", "Ѕ": "S", "α": "a", "ο": "o", "ν": "v", "τ": "t", "ι": "i",
    "κ": "k", "ρ": "p", "Α": "A", "Β": "B", "Ε": "E", "Ζ": "Z", "Η": "H", "Ι": "I",
    "Κ": "K", "Μ": "M", "Ν": "N", "Ο": "O", "Ρ": "P", "Τ": "T", "Υ": "Y", "Χ": "X",
}  # fmt: skip

_LEET = {
    "0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "8": "b", "9": "g",
    "@": "a", "$": "s", "!": "i", "|": "l", "+": "t", "€": "e",
}  # fmt: skip

_TOKEN = re.compile(r"\S+")
# Punctuation that may close a word and must not be folded as leetspeak.
_TRAILING = re.compile(r"[.,;:!?)\]}\"']+$")
_LEADING = re.compile(r"^[(\[{\"']+")
_PART = re.compile(r"[^-/_.]+")


@dataclass(frozen=True)
class NormalizedText:
    """The original text, its normalised views and the offset map between them."""

    original: str
    text: str
    folded: str
    starts: tuple[int, ...]
    """For each character of ``text``: where its source starts in ``original``."""
    ends: tuple[int, ...]
    """For each character of ``text``: where its source ends in ``original``."""

    def to_original(self, start: int, end: int) -> tuple[int, int]:
        """Map ``[start, end)`` in ``text`` to the matching span of ``original``."""
        if not self.text:
            return (0, 0)
        start = min(max(start, 0), len(self.text) - 1)
        end = min(max(end, start + 1), len(self.text))
        return self.starts[start], self.ends[end - 1]

    @property
    def changed(self) -> bool:
        return self.text != self.original or self.folded != self.text


def _units(text: str) -> list[tuple[int, int]]:
    """Split into base character plus following combining marks, as (start, end)."""
    units: list[tuple[int, int]] = []
    i = 0
    n = len(text)
    while i < n:
        j = i + 1
        while j < n and unicodedata.combining(text[j]):
            j += 1
        units.append((i, j))
        i = j
    return units


def _is_invisible(ch: str) -> bool:
    return ch in _INVISIBLE or (unicodedata.category(ch) == "Cf" and ch not in "\n\t")


def _fold_confusables(chars: list[str]) -> None:
    """Fold look-alike letters, but only in words that also hold Latin letters."""
    text = "".join(chars)
    for m in _TOKEN.finditer(text):
        token = m.group()
        has_latin = any("a" <= c.lower() <= "z" for c in token)
        if not has_latin or not any(c in _CONFUSABLES for c in token):
            continue
        for k in range(m.start(), m.end()):
            chars[k] = _CONFUSABLES.get(chars[k], chars[k])


def _fold_leet(text: str) -> str:
    """Fold leetspeak inside words that mix letters with digits or symbols."""
    out = list(text)
    for m in _TOKEN.finditer(text):
        token = m.group()
        lead_m = _LEADING.match(token)
        lead = len(lead_m.group()) if lead_m else 0
        trail_m = _TRAILING.search(token[lead:])
        core_end = len(token) - (len(trail_m.group()) if trail_m else 0)
        core = token[lead:core_end]
        if len(core) < 2 or not any(c.isalpha() for c in core):
            continue
        if not any(c in _LEET for c in core):
            continue
        # Words like "B2B" or "COVID-19" are left alone unless most of the word is letters.
        letters = sum(c.isalpha() for c in core)
        if letters < 2 and len(core) > 3:
            continue
        base = m.start() + lead
        # Fold each hyphen/slash-separated part on its own: "COVID-19" keeps its digits.
        for part in _PART.finditer(core):
            if not any(c.isalpha() for c in part.group()):
                continue
            for k in range(part.start(), part.end()):
                if core[k] in _LEET:
                    out[base + k] = _LEET[core[k]]
    return "".join(out)


def normalize(text: str) -> NormalizedText:
    """Normalise ``text`` for checking; see the module docstring for the views."""
    out_chars: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    for u_start, u_end in _units(text):
        unit = "".join(c for c in text[u_start:u_end] if not _is_invisible(c))
        if not unit:
            continue
        for ch in unicodedata.normalize("NFKC", unit):
            if _is_invisible(ch):
                continue
            out_chars.append(ch)
            starts.append(u_start)
            ends.append(u_end)
    _fold_confusables(out_chars)
    norm = "".join(out_chars)
    return NormalizedText(
        original=text,
        text=norm,
        folded=_fold_leet(norm),
        starts=tuple(starts),
        ends=tuple(ends),
    )
