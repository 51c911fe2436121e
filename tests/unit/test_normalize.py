"""Normalisation closes evasion gaps and keeps spans on the original text."""

from __future__ import annotations

import pytest

from evaluators.normalize import normalize


@pytest.mark.parametrize(
    ("raw", "text", "folded"),
    [
        ("you are an 1d10t!", "you are an 1d10t!", "you are an idiot!"),
        ("sh\u200bit happens", "shit happens", "shit happens"),
        ("ｆｕｃｋ you", "fuck you", "fuck you"),
        ("саt and dоg", "cat and dog", "cat and dog"),  # Cyrillic а and о inside Latin words
        ("You @ss h0le", "You @ss h0le", "You ass hole"),
        ("in\u2060vis\u00adible", "invisible", "invisible"),
    ],
)
def test_evasions_fold(raw: str, text: str, folded: str) -> None:
    n = normalize(raw)
    assert n.text == text
    assert n.folded == folded


@pytest.mark.parametrize(
    "raw",
    [
        "Call 212-555-0199 about COVID-19 and B2B deals.",
        "Привет мир",  # a Cyrillic sentence is not Latin in disguise
        "Version 3.11.7, 10/12/2024",
    ],
)
def test_legitimate_text_is_kept(raw: str) -> None:
    n = normalize(raw)
    assert n.text == raw
    assert n.folded == raw


def test_spans_map_back_through_removed_and_expanded_characters() -> None:
    raw = "mail: ja\u200bne@exa\u200bmple.com ok"
    n = normalize(raw)
    start = n.text.index("jane@example.com")
    end = start + len("jane@example.com")
    o_start, o_end = n.to_original(start, end)
    assert raw[o_start:o_end] == "ja\u200bne@exa\u200bmple.com"

    wide = "ｆｉ ok"  # full-width letters; NFKC shortens nothing here but changes every char
    nw = normalize(wide)
    assert nw.text == "fi ok"
    assert wide[slice(*nw.to_original(0, 2))] == "ｆｉ"


def test_ligature_expands_and_maps_to_one_source_char() -> None:
    raw = "ﬁne"  # U+FB01 expands to "fi"
    n = normalize(raw)
    assert n.text == "fine"
    assert n.to_original(0, 1) == (0, 1)
    assert n.to_original(1, 2) == (0, 1)
    assert n.to_original(0, 4) == (0, 3)


def test_combining_marks_compose() -> None:
    n = normalize("cafe\u0301")
    assert n.text == "café"
    assert n.to_original(3, 4) == (3, 5)


def test_empty_text() -> None:
    n = normalize("")
    assert n.text == "" and n.to_original(0, 0) == (0, 0)
