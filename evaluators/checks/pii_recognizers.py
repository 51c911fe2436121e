"""Assay's own Presidio recognizers: street addresses, US ZIP codes, titled names,
company names, policy deny-lists, and the trained MiniLM tagger for names and places.

Presidio ships none of these for English: names and places come only from the
spaCy NER, which misses many in short informal text, and addresses not at all.
Patterns are case-sensitive where capitalisation is the signal (Presidio's
default flags ignore case, which would make ``[A-Z]`` match any letter).

Heavy imports (presidio, torch) stay inside functions, as in ``pii_engine.py``.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from typing import Any

STREET_ADDRESS = "STREET_ADDRESS"
ZIP_CODE = "ZIP_CODE"
NER_ENTITIES = ("PERSON", "LOCATION", "ORGANIZATION")
NER_RECOGNIZER = "MiniLmNerRecognizer"
DENY_LIST_RECOGNIZER = "DenyListRecognizer"

# Entity types only Assay's recognizers find, and the extra recognizers Assay adds for
# Presidio's own types (class names in this module).
CUSTOM_RECOGNIZER_CLASSES: dict[str, tuple[str, ...]] = {
    STREET_ADDRESS: ("StreetAddressRecognizer",),
    ZIP_CODE: ("ZipCodeRecognizer",),
}
EXTRA_RECOGNIZER_CLASSES: dict[str, tuple[str, ...]] = {
    "PERSON": ("TitledNameRecognizer",),
    "ORGANIZATION": ("CompanySuffixRecognizer",),
}

_CASE_SENSITIVE = re.DOTALL | re.MULTILINE

_STREET_TYPES = (
    "Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Place|Pl|Square|Sq|"
    "Terrace|Ter|Way|Parkway|Pkwy|Highway|Hwy|Circle|Cir|Crescent|Close|Grove|Gardens|Row|Alley|"
    "Trail|Plaza"
)
# "221B Baker Street", "1600 Pennsylvania Ave NW, Suite 4": a house number, one to four
# capitalised words, a street type, an optional direction and unit.
_ADDRESS = (
    r"\b\d{1,6}[A-Za-z]?\s+(?:[A-Z][A-Za-z0-9'’.-]*\s+){1,4}(?:" + _STREET_TYPES + r")\b\.?"
    r"(?:\s+(?:N|S|E|W|NE|NW|SE|SW)\b\.?)?"
    r"(?:,?\s+(?:Apt|Apartment|Suite|Ste|Unit|Flat|Floor|Fl|#)\.?\s*#?[A-Za-z0-9-]+)?"
)
_US_STATES = (
    "AL|AK|AZ|AR|CA|CO|CT|DE|DC|FL|GA|HI|ID|IL|IN|IA|KS|KY|LA|ME|MD|MA|MI|MN|MS|MO|MT|NE|NV|NH|NJ|"
    "NM|NY|NC|ND|OH|OK|OR|PA|RI|SC|SD|TN|TX|UT|VT|VA|WA|WV|WI|WY"
)
_TITLES = (
    "Mr|Mrs|Ms|Mx|Miss|Mister|Madam|Dr|Doctor|Prof|Professor|Sir|Dame|Lady|Lord|Rev|Reverend|Fr|"
    "Father|Sister|Brother|Capt|Captain|Col|Colonel|Gen|General|Lt|Lieutenant|Sgt|Sergeant|Officer|"
    "Judge|Justice|Senator|Sen|Rep|Representative|Gov|Governor|Mayor|President|Minister|Nurse|Coach"
)
# A title, then one to three capitalised words: the name (the title itself is not part of it).
_TITLED_NAME = (
    r"(?<=\b(?:" + _TITLES + r")\.?\s+)[A-Z][\w'’-]*[a-z][\w'’-]*(?:\s+[A-Z][\w'’-]*[a-z][\w'’-]*){0,2}\b"
)
_COMPANY = (
    r"\b(?:[A-Z][\w&'’.-]*\s+){1,4}(?:Inc|Ltd|Limited|LLC|LLP|Corp|Corporation|GmbH|AG|PLC|plc|"
    r"S\.A|Co|Company|Holdings|Bank|Group)\b\.?"
)

ADDRESS_CONTEXT = (
    "address",
    "street",
    "live",
    "lives",
    "living",
    "located",
    "ship",
    "deliver",
    "mail",
    "home",
)
ZIP_CONTEXT = ("zip", "zipcode", "postal", "postcode", "code", "address", "mail")
PERSON_CONTEXT = ("mr", "mrs", "ms", "dr", "miss", "prof", "name", "named", "called", "signed", "patient")
LOCATION_CONTEXT = ("city", "town", "village", "live", "lives", "located", "address", "near", "visit")
# Context words for the trained tagger's types: a word among the five before a found
# entity raises its score (Presidio's context enhancer).
NER_CONTEXT: dict[str, tuple[str, ...]] = {"PERSON": PERSON_CONTEXT, "LOCATION": LOCATION_CONTEXT}


def _pattern(name: str, regex: str, score: float) -> Any:
    from presidio_analyzer import Pattern

    return Pattern(name=name, regex=regex, score=score)


def StreetAddressRecognizer(supported_language: str = "en") -> Any:
    from presidio_analyzer import PatternRecognizer

    return PatternRecognizer(
        supported_entity=STREET_ADDRESS,
        name="StreetAddressRecognizer",
        supported_language=supported_language,
        patterns=[_pattern("street address", _ADDRESS, 0.6)],
        context=list(ADDRESS_CONTEXT),
        global_regex_flags=_CASE_SENSITIVE,
    )


def ZipCodeRecognizer(supported_language: str = "en") -> Any:
    from presidio_analyzer import PatternRecognizer

    return PatternRecognizer(
        supported_entity=ZIP_CODE,
        name="ZipCodeRecognizer",
        supported_language=supported_language,
        patterns=[
            # After a state code ("Springfield, IL 62704") a five-digit number is a ZIP.
            _pattern("zip after state", r"(?<=\b(?:" + _US_STATES + r"),?\s+)\d{5}(?:-\d{4})?\b", 0.7),
            _pattern("zip+4", r"\b\d{5}-\d{4}\b", 0.4),
            # Any five digits is weak on its own; context ("zip", "postal code") lifts it.
            _pattern("zip", r"\b\d{5}\b", 0.05),
        ],
        context=list(ZIP_CONTEXT),
        global_regex_flags=_CASE_SENSITIVE,
    )


def trim_span(text: str, start: int, end: int) -> tuple[int, int]:
    """``(start, end)`` without leading or trailing characters that are not letters or digits."""
    while start < end and not text[start].isalnum():
        start += 1
    while end > start and not text[end - 1].isalnum():
        end -= 1
    return start, end


def TitledNameRecognizer(supported_language: str = "en") -> Any:
    from presidio_analyzer import PatternRecognizer

    return PatternRecognizer(
        supported_entity="PERSON",
        name="TitledNameRecognizer",
        supported_language=supported_language,
        patterns=[_pattern("title + name", _TITLED_NAME, 0.7)],
        context=list(PERSON_CONTEXT),
        global_regex_flags=_CASE_SENSITIVE,
    )


def CompanySuffixRecognizer(supported_language: str = "en") -> Any:
    from presidio_analyzer import PatternRecognizer

    return PatternRecognizer(
        supported_entity="ORGANIZATION",
        name="CompanySuffixRecognizer",
        supported_language=supported_language,
        patterns=[_pattern("name + company suffix", _COMPANY, 0.6)],
        global_regex_flags=_CASE_SENSITIVE,
    )


def deny_list_recognizer(entity: str, terms: Sequence[str], language: str) -> Any:
    """Presidio's deny-list matching (whole words, any case), score 1.0, for one entity type."""
    from presidio_analyzer import PatternRecognizer

    return PatternRecognizer(
        supported_entity=entity,
        name=f"{DENY_LIST_RECOGNIZER}:{entity}",
        supported_language=language,
        deny_list=list(terms),
    )


# Words as the tagger was trained on them (tweet tokenisation): handles, hashtags and URLs
# stay whole, apostrophes stay inside words, other punctuation stands alone.
_WORD = re.compile(r"@\w+|#\w+|(?:https?://|www\.)\S+|\w+(?:['’-]\w+)*|[^\w\s]")


def split_words(text: str) -> list[tuple[str, int, int]]:
    """``(word, start, end)`` for each word of ``text``."""
    return [(m.group(), m.start(), m.end()) for m in _WORD.finditer(text)]


def merge_adjacent(
    entities: Sequence[Any], words: Sequence[tuple[str, int, int]], text: str
) -> list[tuple[str, int, int, float]]:
    """Character spans of the tagger's entities, joining same-type entities that only
    whitespace separates: the tagger sometimes starts a new entity mid-name ("Nobu" B,
    "McCarthy" B; "James K." then "Okubo"), which would leave part of a name unredacted.
    The joined score is the lower of the two."""
    out: list[tuple[str, int, int, float]] = []
    for ent in entities:
        start, end = words[ent.start][1], words[ent.end - 1][2]
        if out and out[-1][0] == ent.label and not text[out[-1][2] : start].strip():
            label, first, _, score = out[-1]
            out[-1] = (label, first, end, min(score, ent.score))
            continue
        out.append((ent.label, start, end, ent.score))
    return out


def make_ner_recognizer(tagger: Any, entities: Sequence[str], language: str, context: Sequence[str]) -> Any:
    """A Presidio recognizer for ``entities`` backed by a loaded ``NerTagger``."""
    from presidio_analyzer import AnalysisExplanation, EntityRecognizer, RecognizerResult

    class MiniLmNerRecognizer(EntityRecognizer):
        """Runs the trained tagger; ``prepare`` tags a whole batch at once (one MiniLM pass)."""

        def __init__(self) -> None:
            super().__init__(
                supported_entities=list(entities),
                name=NER_RECOGNIZER,
                supported_language=language,
                context=list(context),
            )
            self._tagger = tagger
            # Per-thread: concurrent batches on a shared analyzer must not see each other's.
            self._local = threading.local()

        def load(self) -> None:
            return None

        def prepare(self, texts: Sequence[str]) -> None:
            words = [split_words(t) for t in texts]
            tagged = self._tagger.tag([[w for w, _, _ in ws] for ws in words])
            self._local.cache = {t: (ws, ents) for t, ws, ents in zip(texts, words, tagged, strict=True)}

        def release(self) -> None:
            self._local.cache = {}

        def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None) -> list[Any]:
            cached = getattr(self._local, "cache", {}).get(text)
            if cached is None:
                ws = split_words(text)
                cached = (ws, self._tagger.tag([[w for w, _, _ in ws]])[0])
            ws, ents = cached
            wanted = set(entities) & set(self.supported_entities)
            results = []
            for label, start, end, score in merge_adjacent(ents, ws, text):
                if label not in wanted:
                    continue
                # The tagger works on words, and a word may carry punctuation ("Mr. Mayers"
                # tags ". Mayers"): a name span starts and ends on a letter or digit.
                start, end = trim_span(text, start, end)
                if start >= end:
                    continue
                results.append(
                    RecognizerResult(
                        entity_type=label,
                        start=start,
                        end=end,
                        score=round(score, 4),
                        # Presidio's context enhancer writes into the explanation.
                        analysis_explanation=AnalysisExplanation(
                            recognizer=NER_RECOGNIZER,
                            original_score=round(score, 4),
                            textual_explanation=f"trained tagger ({label})",
                        ),
                        recognition_metadata={
                            RecognizerResult.RECOGNIZER_NAME_KEY: NER_RECOGNIZER,
                            RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: self.id,
                        },
                    )
                )
            return results

    return MiniLmNerRecognizer()
