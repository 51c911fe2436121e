"""What the PII recognizers read: the normalised text with the evasions aimed at them undone.

``evaluators.normalize`` already removes invisible characters, applies NFKC
(full-width forms) and folds look-alike letters in mixed-script words. Personal
data has evasions of its own that normalisation leaves, because they would
damage other checks' text (names with accents, words that look like numbers):

* **reversed runs**: text stored backwards inside a right-to-left override
  (U+202E ... U+202C) displays forwards; the view puts it in display order.
* **combining marks** on digits, and on letters of words that hold an ``@``
  or a digit (``5̲5̃5``, ``j̈ane@exa̶mple.com``): dropped there, accents of
  names elsewhere are kept.
* **letters for digits** in number-like words (``2l2-555-O199``, Cyrillic
  ``О`` for 0): folded when the word holds a real digit and nothing but
  digits, look-alikes and number punctuation.
* **spaced digits** (``2 1 2 5 5 5 0 1 9 9``): seven or more single digits
  separated by single spaces are joined.
* **spelled-out emails** (``jane [dot] doe [at] example [dot] com``): bracketed
  ``at``/``dot`` always, bare `` at ``/`` dot `` words only when both the name
  and the host use them, and the host ends in a top-level domain.

Every view character keeps the span of the normalised text it came from, so
findings map back to the original through ``NormalizedText.to_original`` and a
redaction covers the whole disguised value, marks and spaces included.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

from evaluators.normalize import NormalizedText

_RLO, _PDF = "\u202e", "\u202c"
_DIGIT_LOOKALIKES = {
    **dict.fromkeys("OoОоΟοՕ", "0"),
    **dict.fromkeys("lI|ΙІіӏ", "1"),
    **dict.fromkeys("ЗƷ", "3"),
    **dict.fromkeys("SЅ", "5"),
    "б": "6",
    **dict.fromkeys("BВ", "8"),
}
_NUMBER_PUNCT = set("()+-./")
_WORD = re.compile(r"\S+")
_SPACED_DIGITS = re.compile(r"(?<!\w)\d(?: \d){6,}(?!\w)")
_PART = r"[A-Za-z0-9_%+-]+"


def _email_pattern(at: str, dot: str) -> re.Pattern[str]:
    name = rf"(?P<name>{_PART}(?:{dot}{_PART})*)"
    host = rf"(?P<host>{_PART}(?:{dot}{_PART})*{dot}[A-Za-z]{{2,24}})"
    return re.compile(rf"(?<![\w.]){name}{at}{host}(?!\w)", re.IGNORECASE)


# "jane [dot] doe (at) example {dot} com", and "jane dot doe at example dot com" (bare words
# only when both the name and the host spell a dot: "look at example dot com" is not an address).
_BRACKET_DOT = r"(?:\s*[\[({]\s*dot\s*[\])}]\s*|\.)"
_WORD_DOT = r"(?:\s+dot\s+|\.)"
_SPELLED_EMAILS = (
    (_email_pattern(r"\s*[\[({]\s*at\s*[\])}]\s*", _BRACKET_DOT), _BRACKET_DOT, False),
    (_email_pattern(r"\s+at\s+", _WORD_DOT), _WORD_DOT, True),
)
_SPELLED_DOT = re.compile(r"\s+dot\s+", re.IGNORECASE)


@dataclass(frozen=True)
class PiiView:
    """The text the recognizers read, and for each character its span in the normalised text."""

    text: str
    starts: tuple[int, ...]
    ends: tuple[int, ...]

    def to_normalized(self, start: int, end: int) -> tuple[int, int]:
        """Map ``[start, end)`` of the view to the normalised text it came from."""
        if not self.text:
            return (0, 0)
        start = min(max(start, 0), len(self.text) - 1)
        end = min(max(end, start + 1), len(self.text))
        return min(self.starts[start:end]), max(self.ends[start:end])


# One rewrite: (text) -> list of (output characters, source span [start, end) in its input).
Rewrite = Callable[[str], list[tuple[str, int, int]]]


def pii_view(normalized: NormalizedText) -> PiiView:
    """The PII view of ``normalized.text``; see the module docstring."""
    text = normalized.text
    spans = [(i, i + 1) for i in range(len(text))]
    rewrites: list[Rewrite] = [
        lambda t: _display_order(t, normalized),
        _drop_marks,
        _fold_digit_lookalikes,
        _join_spaced_digits,
        _unspell_emails,
    ]
    for rewrite in rewrites:
        out = rewrite(text)
        if len(out) == len(text) and all(
            (s, e) == (k, k + 1) and piece == text[k] for k, (piece, s, e) in enumerate(out)
        ):
            continue
        # Compose: each new character covers the union of its sources' spans.
        spans = [(spans[s][0], spans[e - 1][1]) for _, s, e in out]
        text = "".join(piece for piece, _, _ in out)
    return PiiView(text, tuple(s for s, _ in spans), tuple(e for _, e in spans))


def _same(text: str) -> list[tuple[str, int, int]]:
    return [(c, i, i + 1) for i, c in enumerate(text)]


def _display_order(text: str, normalized: NormalizedText) -> list[tuple[str, int, int]]:
    """Reverse what a right-to-left override shows reversed (normalisation removed the override)."""
    original = normalized.original
    if _RLO not in original:
        return _same(text)
    runs: list[tuple[int, int]] = []
    at = original.find(_RLO)
    while at != -1:
        ends = [p for p in (original.find(_PDF, at), original.find("\n", at)) if p != -1]
        end = min(ends) if ends else len(original)
        runs.append((at, end))
        at = original.find(_RLO, end)
    out = _same(text)
    k = 0
    while k < len(text):
        run = next((r for r in runs if r[0] < normalized.starts[k] < r[1]), None)
        if run is None:
            k += 1
            continue
        j = k
        while j < len(text) and run[0] < normalized.starts[j] < run[1]:
            j += 1
        out[k:j] = out[k:j][::-1]
        k = j
    return out


def _drop_marks(text: str) -> list[tuple[str, int, int]]:
    carrier = [False] * len(text)
    for start, end, word in _words(text):
        bare = "".join(c for c in word if not unicodedata.combining(c))
        if "@" in bare or any(c.isdigit() for c in bare):
            carrier[start:end] = [True] * (end - start)
    out: list[tuple[str, int, int]] = []
    for i, c in enumerate(text):
        if carrier[i] and unicodedata.combining(c):
            if out:  # the mark joins the character it sat on, so a redaction covers it
                piece, start, _ = out[-1]
                out[-1] = (piece, start, i + 1)
            continue
        if carrier[i] and not c.isascii():
            base = "".join(d for d in unicodedata.normalize("NFD", c) if not unicodedata.combining(d))
            c = base if len(base) == 1 else c
        out.append((c, i, i + 1))
    return out


def _fold_digit_lookalikes(text: str) -> list[tuple[str, int, int]]:
    out = _same(text)
    words = _words(text)
    numeric = [
        all(c.isdigit() or c in _DIGIT_LOOKALIKES or c in _NUMBER_PUNCT for c in word) for _, _, word in words
    ]
    digits = [any(c.isdigit() for c in word) for _, _, word in words]
    for k, (start, end, word) in enumerate(words):
        if not numeric[k]:
            continue
        # A word with a real digit, or a short group beside one ("+l 646 SSS 0107").
        beside = any(0 <= n < len(words) and numeric[n] and digits[n] for n in (k - 1, k + 1))
        if digits[k] or (beside and len(word) >= 2):
            for i in range(start, end):
                out[i] = (_DIGIT_LOOKALIKES.get(text[i], text[i]), i, i + 1)
    return out


def _join_spaced_digits(text: str) -> list[tuple[str, int, int]]:
    out: list[tuple[str, int, int]] = []
    last = 0
    for m in _SPACED_DIGITS.finditer(text):
        out.extend(_same(text)[last : m.start()])
        # Nine digits read as an SSN (3-2-4); other runs are joined.
        dashes = (3, 5) if m.group().count(" ") == 8 else ()
        seen = 0
        for i in range(m.start(), m.end()):
            if text[i] != " ":
                out.append((text[i], i, i + 1))
                seen += 1
            elif seen in dashes:
                out.append(("-", i, i + 1))
            else:  # the dropped space joins the digit before it, so a redaction covers it
                piece, start, _ = out[-1]
                out[-1] = (piece, start, i + 1)
        last = m.end()
    out.extend(_same(text)[last:])
    return out


def _unspell_emails(text: str) -> list[tuple[str, int, int]]:
    for pattern, dot, words in _SPELLED_EMAILS:
        out: list[tuple[str, int, int]] = []
        last = 0
        for m in pattern.finditer(text):
            if words and not (_SPELLED_DOT.search(m["name"]) and _SPELLED_DOT.search(m["host"])):
                continue
            out.extend(_same(text)[last : m.start()])
            out.extend(_rewrite_part(text, m.start("name"), m.end("name"), dot))
            out.append(("@", m.end("name"), m.start("host")))
            out.extend(_rewrite_part(text, m.start("host"), m.end("host"), dot))
            last = m.end()
        out.extend(_same(text)[last:])
        text_out = "".join(piece for piece, _, _ in out)
        if text_out != text:
            return out
    return _same(text)


def _rewrite_part(text: str, start: int, end: int, dot: str) -> list[tuple[str, int, int]]:
    """``jane [dot] doe`` -> ``jane.doe``: each spelled dot becomes one '.' covering it."""
    out: list[tuple[str, int, int]] = []
    i = start
    for m in re.finditer(dot, text[start:end], re.IGNORECASE):
        out.extend((text[k], k, k + 1) for k in range(i, start + m.start()))
        out.append((".", start + m.start(), start + m.end()))
        i = start + m.end()
    out.extend((text[k], k, k + 1) for k in range(i, end))
    return out


def _words(text: str) -> list[tuple[int, int, str]]:
    return [(m.start(), m.end(), m.group()) for m in _WORD.finditer(text)]
