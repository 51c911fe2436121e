"""The PII view: evasions aimed at personal data undone, every character mapped back."""

from __future__ import annotations

import pytest

from evaluators.checks.pii_view import pii_view
from evaluators.normalize import normalize


def _view(text: str) -> tuple[str, str]:
    normalized = normalize(text)
    return normalized.original, pii_view(normalized).text


@pytest.mark.parametrize(
    ("text", "seen"),
    [
        ("SSN \u202e0211-50-870\u202c is on file", "SSN 078-05-1120 is on file"),
        ("mail \u202emoc.elpmaxe@eod.enaj\u202c now", "mail jane.doe@example.com now"),
        ("call (415̲) 55̃5̲-0̲1̀4̲2 now", "call (415) 555-0142 now"),
        ("write j̈àǹe.d̶ôé@ẹx̂a̶m̀plè.ćõm̃ today", "write jane.doe@example.com today"),
        ("call (4|S) SSS-OI42 now", "call (415) 555-0142 now"),
        ("SSN О78-Ο5-ΙΙ2о here", "SSN 078-05-1120 here"),
        ("call 2 1 2 5 5 5 0 1 9 9 now", "call 2125550199 now"),
        ("SSN 2 8 4 6 1 7 3 9 5 here", "SSN 284-61-7395 here"),
        ("text +l 646 SSS oIO7 now", "text +1 646 555 0107 now"),
        ("jane [dot] doe [at] example [dot] com", "jane.doe@example.com"),
        ("reach me at tom (dot) baker (at) webmail (dot) com", "reach me at tom.baker@webmail.com"),
        ("jane dot doe at example dot com", "jane.doe@example.com"),
    ],
)
def test_evasions_are_undone(text: str, seen: str) -> None:
    assert _view(text)[1] == seen


@pytest.mark.parametrize(
    "text",
    [
        "José García met Zoë at the café.",  # accents of names stay
        "look at example dot com",  # bare 'at' and 'dot' need a spelled dot in the name too
        "SOS from BOB, see you at 5 pm",  # look-alike words without a digit stay words
        "COVID-19 rates rose 3 4 5 percent",  # fewer than seven spaced digits
        "I was at home. Then at 5 pm.",
    ],
)
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert _view(text)[1] == normalize(text).text


def test_spans_cover_the_disguised_value_in_the_original() -> None:
    text = "call 2 1 2 5 5 5 0 1 9 9 or write jane [dot] doe [at] example [dot] com, SSN О78-Ο5-ΙΙ2о̲"
    normalized = normalize(text)
    view = pii_view(normalized)
    for value, disguised in [
        ("2125550199", "2 1 2 5 5 5 0 1 9 9"),
        ("jane.doe@example.com", "jane [dot] doe [at] example [dot] com"),
        ("078-05-1120", "О78-Ο5-ΙΙ2о̲"),
    ]:
        at = view.text.index(value)
        start, end = normalized.to_original(*view.to_normalized(at, at + len(value)))
        assert text[start:end] == disguised


def test_reversed_run_maps_back_to_the_whole_run() -> None:
    text = "SSN \u202e0211-50-870\u202c ok"
    normalized = normalize(text)
    view = pii_view(normalized)
    at = view.text.index("078-05-1120")
    start, end = normalized.to_original(*view.to_normalized(at, at + 11))
    assert text[start:end] == "0211-50-870"
