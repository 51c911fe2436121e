"""Redaction with Presidio's anonymizer, on spans of the original text."""

from __future__ import annotations

import pytest

from evaluators.findings import Action, Finding, Span
from evaluators.normalize import normalize
from evaluators.redact import redact


def finding(
    label: str,
    start: int,
    end: int,
    *,
    score: float = 1.0,
    style: str | None = "tag",
    action: Action = Action.REDACT,
    fired: bool = True,
    span: bool = True,
) -> Finding:
    return Finding(
        check="pii",
        label=label,
        score=score,
        threshold=0.5,
        triggered=fired,
        action=action,
        engine="test",
        span=Span(start, end) if span else None,
        detail={} if style is None else {"redact_with": style},
    )


def on_original(text: str, needle: str) -> tuple[int, int]:
    """Where ``needle`` (found in the normalised text) sits in the original ``text``."""
    n = normalize(text)
    start = n.text.index(needle)
    return n.to_original(start, start + len(needle))


def test_tag_replaces_the_span() -> None:
    text = "Call 212-555-0199 now"
    assert redact(text, [finding("PHONE_NUMBER", 5, 17)]) == "Call <PHONE_NUMBER> now"


@pytest.mark.parametrize("style", [None, "shred"])
def test_missing_or_unknown_style_falls_back_to_tag(style: str | None) -> None:
    text = "Call 212-555-0199 now"
    assert redact(text, [finding("PHONE_NUMBER", 5, 17, style=style)]) == "Call <PHONE_NUMBER> now"


@pytest.mark.parametrize(
    "f",
    [
        finding("PHONE_NUMBER", 5, 17, fired=False),
        finding("PHONE_NUMBER", 5, 17, action=Action.FLAG),
        finding("PHONE_NUMBER", 5, 17, action=Action.BLOCK),
        finding("PHONE_NUMBER", 5, 17, span=False),
        finding("PHONE_NUMBER", 7, 7),
    ],
    ids=["untriggered", "flag", "block", "no-span", "empty-span"],
)
def test_only_triggered_redact_findings_with_a_span_apply(f: Finding) -> None:
    text = "Call 212-555-0199 now"
    assert redact(text, [f]) == text


def test_no_findings_returns_the_text() -> None:
    assert redact("hello", []) == "hello"
    assert redact("", []) == ""


def test_mask_covers_every_character() -> None:
    text = "card 4012888888881881 ok"
    assert redact(text, [finding("CREDIT_CARD", 5, 21, style="mask")]) == "card " + "*" * 16 + " ok"


def test_hash_is_sha256_hex() -> None:
    text = "mail jane.doe@example.com ok"
    out = redact(text, [finding("EMAIL_ADDRESS", 5, 25, style="hash")])
    assert out.startswith("mail ")
    assert out.endswith(" ok")
    digest = out[5:-3]
    assert len(digest) == 64
    assert all(c in "0123456789abcdef" for c in digest)
    assert "jane" not in out


def test_partial_overlap_redacts_the_union() -> None:
    text = "0123456789abcdef"
    out = redact(text, [finding("A", 2, 8, score=0.9), finding("B", 6, 12, score=0.6)])
    # The higher score keeps the shared characters; nothing of 2..12 survives.
    assert out == "01<A><B>cdef"


def test_contained_span_is_absorbed() -> None:
    text = "mail jane.doe@example.com ok"
    out = redact(
        text,
        [finding("EMAIL_ADDRESS", 5, 25), finding("URL", 14, 25, score=0.5)],
    )
    assert out == "mail <EMAIL_ADDRESS> ok"


def test_overlapping_styles_leave_nothing_behind() -> None:
    text = "secret-token-value"
    out = redact(
        text,
        [finding("A", 0, 12, score=0.5, style="mask"), finding("B", 7, 18, score=0.9)],
    )
    assert out == "*******<B>"


def test_same_label_two_styles() -> None:
    text = "a 4012888888881881 b 4111111111111111"
    out = redact(
        text,
        [finding("CREDIT_CARD", 2, 18, style="mask"), finding("CREDIT_CARD", 21, 37)],
    )
    assert out == "a " + "*" * 16 + " b <CREDIT_CARD>"


def test_out_of_range_span_is_clamped() -> None:
    assert redact("abc secret", [finding("X", 4, 99)]) == "abc <X>"


@pytest.mark.parametrize(
    ("text", "needle", "expected"),
    [
        ("mail jane\u200b.doe@exa\u200bmple.com now", "jane.doe@example.com", "mail <E> now"),
        ("call ２１２-５５５-０１９９ now", "212-555-0199", "call <E> now"),
        ("\u200bcall 212\u2060555\u20600199\u200b now", "2125550199", "\u200bcall <E>\u200b now"),
        ("ｎａｍｅ: Ｊａｎｅ, 📞 212-555-0199", "212-555-0199", "ｎａｍｅ: Ｊａｎｅ, 📞 <E>"),
    ],
    ids=["zero-width", "full-width", "word-joiner", "emoji-before"],
)
def test_spans_on_the_original_with_invisible_and_wide_chars(text: str, needle: str, expected: str) -> None:
    start, end = on_original(text, needle)
    assert redact(text, [finding("E", start, end)]) == expected


def test_mask_over_invisible_chars_masks_them_too() -> None:
    text = "pin 12\u200b34 ok"
    start, end = on_original(text, "1234")
    assert redact(text, [finding("PIN", start, end, style="mask")]) == "pin ***** ok"
