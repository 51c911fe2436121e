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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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
    """``(start, end)`` without leading or trailing characters that are not letters or digits,
    except the ``#`` of a hashtag (``#London`` is one word, and the corpora annotate it whole)."""
    while start < end and not text[start].isalnum() and not _hashtag_at(text, start, end):
        start += 1
    while end > start and not text[end - 1].isalnum():
        end -= 1
    return start, end


def _hashtag_at(text: str, start: int, end: int) -> bool:
    return text[start] == "#" and start + 1 < end and text[start + 1].isalnum()


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


Probabilities = Callable[[Sequence[Sequence[str]]], list[Any]]
"""Per-word label probabilities: one ``(len(words), len(ner_minilm.LABELS))`` tensor per sentence."""


def word_probabilities(tagger: Any) -> Probabilities:
    """A loaded ``NerTagger``'s probabilities per word (its ``tag`` keeps only the decoded
    entities; confirming spaCy's entities needs the probabilities themselves)."""

    def run(sentences: Sequence[Sequence[str]]) -> list[Any]:
        import torch

        from evaluators.ner_minilm import LABELS, _window

        feats = tagger.encoder.encode(sentences)
        with torch.inference_mode():
            return [
                torch.softmax(tagger.head(_window(x)), dim=1) if len(words) else torch.zeros((0, len(LABELS)))
                for words, x in zip(sentences, feats, strict=True)
            ]

    return run


@dataclass(frozen=True)
class SpacyConfirm:
    """How spaCy's entities join the trained tagger's (``spacy_names: confirmed``).

    A spaCy entity of a type in ``gates`` counts only where the tagger agrees: its edge
    words that the tagger gives less than ``floor`` probability of being in any entity are
    dropped (spaCy's "Call Jane Doe" -> "Jane Doe"), and so is a sentence-initial first word
    the tagger does not put in an entity ("Meet Ahmed Khan"); the words left must carry, on
    average, at least the gate's probability of that type. An entity that passes replaces
    the tagger's spans it overlaps and grows over those of its own type (the surname the
    tagger missed), scored max(``score``, theirs).
    """

    gates: tuple[tuple[str, float], ...]
    floor: float
    score: float = 0.85
    """Presidio's score for a spaCy entity."""


# The best PERSON + LOCATION exact span F1 on the dev splits of WNUT-17 and the Broad Twitter
# Corpus, never a test split (`bench/pii_quality.py --split dev --sweep`, chosen again for the
# fine-tuned tagger: PERSON 0.733, LOCATION 0.628 against 0.728 and 0.595 for the tagger
# alone; the other floors and gates are within 0.02). Organisations are left out: spaCy's
# gained ORGANIZATION at most 0.004 dev F1 at this floor and gate, and cost more at others.
CONFIRM = SpacyConfirm(gates=(("PERSON", 0.3), ("LOCATION", 0.3)), floor=0.15)

NerSpan = tuple[str, int, int, float, bool]
"""(entity type, start, end, score, confirmed by spaCy)."""


def ner_spans(
    text: str,
    words: Sequence[tuple[str, int, int]],
    probs: Any,
    spacy_entities: Sequence[tuple[str, int, int]] = (),
    confirm: SpacyConfirm | None = None,
) -> list[NerSpan]:
    """The tagger's entities in ``text`` as character spans, with spaCy's confirmed ones."""
    from evaluators.ner_minilm import LABELS, decode, is_handle

    entities = decode(probs, [w for w, _, _ in words]) if len(words) else []
    spans: list[NerSpan] = []
    for label, start, end, score in merge_adjacent(entities, words, text):
        # The tagger works on words, and a word may carry punctuation ("Mr. Mayers" tags
        # ". Mayers"): a span starts and ends on a letter or digit (or a hashtag's #).
        start, end = trim_span(text, start, end)
        if start < end:
            spans.append((label, start, end, score, False))
    if confirm is None:
        return spans

    def rejected(i: int) -> bool:
        word = words[i][0]
        in_entity = 1.0 - float(probs[i, 0])
        return in_entity < confirm.floor or is_handle(word) or not any(c.isalnum() for c in word)

    gates = dict(confirm.gates)
    for label, start, end in spacy_entities:
        gate = gates.get(label)
        idx = [i for i, (_, s, e) in enumerate(words) if s < end and e > start]
        while idx and rejected(idx[0]):
            idx.pop(0)
        while idx and rejected(idx[-1]):
            idx.pop()
        # A capital at the start of a sentence says nothing ("Meet Ahmed Khan"): spaCy's span
        # keeps a sentence-initial word only when the tagger puts that word in an entity.
        while len(idx) > 1 and _sentence_initial(words, idx[0]) and int(probs[idx[0]].argmax()) == 0:
            idx.pop(0)
        if gate is None or not idx:
            continue
        b, i_ = LABELS.index(f"B-{label}"), LABELS.index(f"I-{label}")
        if sum(float(probs[i, b] + probs[i, i_]) for i in idx) / len(idx) < gate:
            continue
        start, end = trim_span(text, max(start, words[idx[0]][1]), min(end, words[idx[-1]][2]))
        if start >= end:
            continue
        hits = [s for s in spans if s[1] < end and s[2] > start]
        same = [s for s in hits if s[0] == label]
        spans = [s for s in spans if s not in hits]
        spans.append(
            (
                label,
                min([start, *(s[1] for s in same)]),
                max([end, *(s[2] for s in same)]),
                max([confirm.score, *(s[3] for s in same)]),
                True,
            )
        )
    return sorted(spans, key=lambda s: (s[1], s[2]))


def _sentence_initial(words: Sequence[tuple[str, int, int]], i: int) -> bool:
    # As the tagger's own shape feature (ner_minilm.shape_features) defines it.
    return i == 0 or words[i - 1][0] in {".", "!", "?", ":", '"'}


class TaggedBatch:
    """Words and tagger probabilities for the texts being analysed, shared by the tagger's
    recognizers of one analyzer: one MiniLM pass per batch, however many types it serves."""

    def __init__(self, probabilities: Probabilities) -> None:
        self._probabilities = probabilities
        # Per-thread: concurrent batches on a shared analyzer must not see each other's.
        self._local = threading.local()

    def _cache(self) -> dict[str, tuple[list[tuple[str, int, int]], Any]]:
        cache: dict[str, tuple[list[tuple[str, int, int]], Any]] | None = getattr(self._local, "cache", None)
        if cache is None:
            cache = self._local.cache = {}
        return cache

    def prepare(self, texts: Sequence[str]) -> None:
        cache = self._cache()
        todo = [t for t in dict.fromkeys(texts) if t not in cache]
        if todo:
            words = [split_words(t) for t in todo]
            probs = self._probabilities([[w for w, _, _ in ws] for ws in words])
            cache.update(zip(todo, zip(words, probs, strict=True), strict=True))

    def release(self) -> None:
        self._local.cache = {}

    def get(self, text: str) -> tuple[list[tuple[str, int, int]], Any]:
        cached = self._cache().get(text)
        if cached is None:
            words = split_words(text)
            cached = (words, self._probabilities([[w for w, _, _ in words]])[0])
        return cached


def make_ner_recognizer(
    batch: TaggedBatch,
    entities: Sequence[str],
    language: str,
    context: Sequence[str],
    confirm: SpacyConfirm | None = None,
) -> Any:
    """A Presidio recognizer for ``entities`` backed by the trained tagger; with ``confirm``,
    spaCy's entities (from Presidio's NLP artifacts) join where the tagger agrees."""
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
            self._batch = batch

        def load(self) -> None:
            return None

        def prepare(self, texts: Sequence[str]) -> None:
            self._batch.prepare(texts)

        def release(self) -> None:
            self._batch.release()

        def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None) -> list[Any]:
            wanted = set(entities) & set(self.supported_entities)
            if not wanted:
                return []
            words, probs = self._batch.get(text)
            found = [(e.label_, e.start_char, e.end_char) for e in getattr(nlp_artifacts, "entities", ())]
            results = []
            for label, start, end, score, confirmed in ner_spans(text, words, probs, found, confirm):
                if label not in wanted:
                    continue
                how = "spaCy entity confirmed by the trained tagger" if confirmed else "trained tagger"
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
                            textual_explanation=f"{how} ({label})",
                        ),
                        recognition_metadata={
                            RecognizerResult.RECOGNIZER_NAME_KEY: NER_RECOGNIZER,
                            RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: self.id,
                        },
                    )
                )
            return results

    return MiniLmNerRecognizer()
