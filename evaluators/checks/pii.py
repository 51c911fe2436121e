"""PII check: Presidio's analyzer on a local spaCy model, spans on the original text.

The check scores the PII view of ``item.text`` (``pii_view``: the normalised text,
invisible characters removed and full-width digits folded, with the evasions
aimed at personal data undone) so an email split by a zero-width space is still
an email, and maps every span back to the original through the view and
``normalized.to_original`` so redaction covers the invisible characters too.

Which recognizers a config needs, and loading spaCy and Presidio without
downloads, live in ``pii_engine``; Assay's own recognizers in ``pii_recognizers``.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Sequence
from dataclasses import astuple, dataclass, replace
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from evaluators.checks.base import CheckBase, CheckInput
from evaluators.checks.config import CheckConfigBase, Strict
from evaluators.checks.pii_engine import (
    DEFAULT_SPACY_MODEL,
    DEFAULT_SPACY_PIP,
    KNOWN_ENTITIES,
    build_analyzer,
    build_nlp_engine,
    load_ner_tagger,
    model_label,
    recognizer_specs,
    resolve_ner_folder,
)
from evaluators.checks.pii_recognizers import NER_ENTITIES, NER_RECOGNIZER
from evaluators.checks.pii_view import PiiView, pii_view
from evaluators.errors import CheckFailed
from evaluators.findings import Action, Finding, Span
from evaluators.models import shared_model
from evaluators.normalize import normalize

RedactWith = Literal["tag", "mask", "hash"]

DEFAULT_NER_MODEL = "ner-minilm"

# Texts per spaCy ``nlp.pipe`` minibatch.
_PIPE_BATCH = 64


class PiiEntityRule(Strict):
    """Threshold, action and redaction style for one PII entity type."""

    threshold: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="Presidio score (0 to 1) at or above which the entity triggers.",
    )
    action: Action = Field(
        default=Action.REDACT,
        description="What a triggered entity does: flag, redact or block (allow is not accepted).",
    )
    redact_with: RedactWith = Field(
        default="tag",
        description=(
            "How a redacted span is replaced: tag (<PHONE_NUMBER>), mask (one * per "
            "character) or hash (salted sha256, Presidio's hash operator)."
        ),
    )

    @field_validator("action")
    @classmethod
    def _not_allow(cls, action: Action) -> Action:
        if action is Action.ALLOW:
            raise ValueError(
                "action allow does nothing for a PII entity; use flag, redact or block, or remove the entity"
            )
        return action


class PiiConfig(CheckConfigBase):
    """Find personal data with Presidio and flag, redact or block it per entity type."""

    check: Literal["pii"] = Field(description="Check name: pii.")
    engine: Literal["presidio"] = Field(
        default="presidio", description="Detection engine; only presidio is available."
    )
    language: str = Field(
        default="en",
        min_length=2,
        max_length=8,
        description="Language code the texts are analysed as (Presidio's language).",
    )
    spacy_model: str = Field(
        default=DEFAULT_SPACY_MODEL,
        min_length=1,
        description=(
            "spaCy model for names, places and dates: an installed model package name "
            f"(default {DEFAULT_SPACY_MODEL}, from pip package {DEFAULT_SPACY_PIP}) or a "
            "model folder. Never downloaded at run time."
        ),
    )
    entities: dict[str, PiiEntityRule] = Field(
        min_length=1,
        description=(
            "Entity types to look for (Presidio names such as PHONE_NUMBER, EMAIL_ADDRESS, "
            "PERSON, CREDIT_CARD) with their rule. Types not listed are never reported."
        ),
    )
    allow_list: tuple[str, ...] = Field(
        default=(),
        description=(
            "Texts never flagged, compared with the detected span after normalisation, "
            "ignoring case (e.g. a support address)."
        ),
    )
    context_words: dict[str, tuple[str, ...]] = Field(
        default_factory=dict,
        description=(
            "Extra context words per entity type; a word among the five before a match "
            "raises its score (Presidio's context enhancer, +0.35, at least 0.4)."
        ),
    )
    ner_model: str | None = Field(
        default=DEFAULT_NER_MODEL,
        min_length=1,
        description=(
            "Trained tagger for PERSON, LOCATION and ORGANIZATION (MiniLM features, trained on "
            "WNUT-17 and the Broad Twitter Corpus): a model name under the model directory "
            f"(default {DEFAULT_NER_MODEL}, built by `assay models build {DEFAULT_NER_MODEL}`) or "
            "a folder. null: the spaCy model alone finds them. A missing model stops startup."
        ),
    )
    spacy_names: Literal["confirmed", "all", "none"] = Field(
        default="confirmed",
        description=(
            "With ner_model set, what the spaCy model's PERSON and LOCATION entities add to the "
            "trained tagger's. confirmed: those the tagger gives some probability of that type, "
            "without edge words it rejects (highest span F1, even recall of names across "
            "origins; bench/pii_quality.py). all: every spaCy PERSON, LOCATION and ORGANIZATION "
            "entity as well (more recall, much less precision). none: the tagger alone (true "
            "and false are accepted for all and none). Without ner_model spaCy always finds them."
        ),
    )
    deny_list: dict[str, tuple[str, ...]] = Field(
        default_factory=dict,
        description=(
            "Terms always reported as an entity type, per type (e.g. PERSON: [names of staff], "
            "ORGANIZATION: [client names]): whole words, any case, score 1.0. The type must be "
            "in entities."
        ),
    )
    recognizers: Literal["needed", "all"] = Field(
        default="needed",
        description=(
            "needed: load only the recognizers for the configured entities (faster load). "
            "all: load every predefined recognizer, one analyzer shared by all pii "
            "entries with the same model, language and context words."
        ),
    )

    @field_validator("entities")
    @classmethod
    def _known_entities(cls, entities: dict[str, PiiEntityRule]) -> dict[str, PiiEntityRule]:
        _check_entity_names(entities)
        return entities

    @field_validator("spacy_names", mode="before")
    @classmethod
    def _spacy_names_bool(cls, value: Any) -> Any:
        # Before "confirmed" existed this was a boolean: true was "all", false "none".
        if isinstance(value, bool):
            return "all" if value else "none"
        return value

    @field_validator("allow_list")
    @classmethod
    def _no_blank_allowed(cls, allow_list: tuple[str, ...]) -> tuple[str, ...]:
        if any(not a.strip() for a in allow_list):
            raise ValueError("allow_list entries must not be blank")
        return allow_list

    @model_validator(mode="after")
    def _context_for_configured(self) -> PiiConfig:
        for name, table in (("context_words", self.context_words), ("deny_list", self.deny_list)):
            _check_entity_names(table)
            extra = sorted(set(table) - set(self.entities))
            if extra:
                raise ValueError(f"{name} for {', '.join(extra)}: these entity types are not in entities")
            for entity, words in table.items():
                if any(not w.strip() for w in words):
                    raise ValueError(f"{name}.{entity}: entries must not be blank")
        for entity, words in self.deny_list.items():
            if not words:
                raise ValueError(f"deny_list.{entity}: give at least one term, or remove the entry")
        return self


def _check_entity_names(names: Sequence[str] | dict[str, Any]) -> None:
    unknown = [n for n in names if n not in KNOWN_ENTITIES]
    if not unknown:
        return
    hints = []
    for name in unknown:
        upper = name.upper()
        close = (
            difflib.get_close_matches(upper, KNOWN_ENTITIES, n=1)
            or [e for e in KNOWN_ENTITIES if upper and upper in e][:1]
        )
        hints.append(f"{name!r}" + (f" (did you mean {close[0]}?)" if close else ""))
    raise ValueError(f"unknown entity type {', '.join(hints)}; allowed: {', '.join(KNOWN_ENTITIES)}")


@dataclass(frozen=True)
class Candidate:
    entity: str
    start: int
    end: int
    score: float
    triggered: bool
    recognizer: str


def resolve_overlaps(candidates: Sequence[Candidate]) -> list[Candidate]:
    """Keep one label per span: triggered first, then highest score, then longest.

    Triggered results rank first so that an under-threshold label can never
    hide a triggered one on the same characters (that would leak the span),
    and a kept triggered span grows to cover every triggered span it overlaps.
    """
    ranked = sorted(candidates, key=lambda c: (not c.triggered, -c.score, -(c.end - c.start), c.start))
    kept: list[Candidate] = []
    for cand in ranked:
        hits = [i for i, k in enumerate(kept) if not (cand.end <= k.start or cand.start >= k.end)]
        if not hits:
            kept.append(cand)
            continue
        if cand.triggered:
            # A triggered span that sticks out of the kept one ("Jane" kept, "Jane Doe" from a
            # second engine) would leave its extra characters unredacted: widen the kept span.
            for i in hits:
                k = kept[i]
                if k.triggered:
                    kept[i] = replace(k, start=min(k.start, cand.start), end=max(k.end, cand.end))
    # Widening can make two kept spans touch: merge those into the better-ranked one.
    merged: list[Candidate] = []
    for cand in sorted(kept, key=lambda c: (c.start, c.end)):
        last = merged[-1] if merged else None
        if last is not None and cand.start < last.end and cand.triggered and last.triggered:
            rank_last, rank_cand = (last.score, last.end - last.start), (cand.score, cand.end - cand.start)
            better = last if rank_last >= rank_cand else cand
            merged[-1] = replace(better, start=last.start, end=max(last.end, cand.end))
        else:
            merged.append(cand)
    return merged


def _allow_key(text: str) -> str:
    return normalize(text).text.strip().casefold()


class PiiCheck(CheckBase):
    """Presidio on spaCy; one finding per detected entity, spans on the original text."""

    name: ClassVar[str] = "pii"
    # ner-minilm reads 128 word pieces (about 500 characters); longer texts come in windows.
    window_chars: ClassVar[int | None] = 500
    config: PiiConfig

    def __init__(self, config: PiiConfig) -> None:
        super().__init__(config)
        self._analyzer: Any = None
        self._allowed = frozenset(_allow_key(a) for a in config.allow_list)
        self._entities = sorted(config.entities)

    @property
    def engine(self) -> str:
        label = f"presidio/{model_label(self.config.spacy_model)}"
        if self.config.ner_model is not None and set(self.config.entities) & set(NER_ENTITIES):
            label += f"+{model_label(self.config.ner_model)}"
        return label

    def _load(self) -> None:
        cfg = self.config
        specs = recognizer_specs(cfg)
        tagger: Any = None
        ner_folder = ""
        if any(s.class_name == NER_RECOGNIZER for s in specs):
            assert cfg.ner_model is not None
            folder = resolve_ner_folder(cfg.ner_model)
            ner_folder = str(folder)
            tagger = shared_model(f"ner-minilm:{folder}", lambda: load_ner_tagger(folder))
        nlp_engine = shared_model(
            f"spacy:{cfg.spacy_model}:{cfg.language}",
            lambda: build_nlp_engine(cfg.spacy_model, cfg.language),
        )
        digest = hashlib.sha256(json.dumps([astuple(s) for s in specs]).encode()).hexdigest()[:12]
        key = f"presidio:{cfg.spacy_model}:{ner_folder}:{cfg.language}:{cfg.recognizers}:{digest}"
        self._analyzer = shared_model(key, lambda: build_analyzer(nlp_engine, specs, cfg.language, tagger))

    def evaluate(self, batch: Sequence[CheckInput]) -> list[list[Finding]]:
        self._ensure_loaded()
        out: list[list[Finding]] = [[] for _ in batch]
        todo = [i for i, item in enumerate(batch) if item.text.strip()]
        if not todo:
            return out
        # Recognizers read the PII view: evasions aimed at them (reversed runs, marks on digits,
        # letters for digits, spaced digits, spelled-out emails) undone, spans kept.
        views = {i: pii_view(batch[i].normalized) for i in todo}
        try:
            analysed = self._analyze([views[i].text for i in todo])
        except Exception as exc:
            raise CheckFailed(f"presidio analysis failed: {type(exc).__name__}: {exc}") from exc
        for i, results in zip(todo, analysed, strict=True):
            out[i] = self._findings(batch[i], views[i], results)
        return out

    def _analyze(self, texts: list[str]) -> list[list[Any]]:
        """Run spaCy once over the batch (``nlp.pipe``), then Presidio per text."""
        analyzer = self._analyzer
        language = self.config.language
        artifacts = analyzer.nlp_engine.process_batch(texts, language=language, batch_size=_PIPE_BATCH)
        # The trained tagger runs MiniLM once over the whole batch, not once per text.
        batched = [r for r in analyzer.registry.recognizers if hasattr(r, "prepare")]
        for rec in batched:
            rec.prepare(texts)
        results: list[list[Any]] = []
        try:
            for text, (_, nlp_artifacts) in zip(texts, artifacts, strict=True):
                results.append(
                    analyzer.analyze(
                        text=text,
                        language=language,
                        entities=self._entities,
                        # Below-threshold results are reported too (triggered=False);
                        # the rules' thresholds are applied below, not by Presidio.
                        score_threshold=0.0,
                        nlp_artifacts=nlp_artifacts,
                    )
                )
        finally:
            for rec in batched:
                rec.release()
        return results

    def _findings(self, item: CheckInput, view: PiiView, results: Sequence[Any]) -> list[Finding]:
        rules = self.config.entities
        text = view.text
        candidates = []
        for r in results:
            rule = rules.get(r.entity_type)
            if rule is None or r.score <= 0 or r.end <= r.start:
                continue
            if self._allowed and _allow_key(text[r.start : r.end]) in self._allowed:
                continue
            meta = r.recognition_metadata or {}
            candidates.append(
                Candidate(
                    entity=r.entity_type,
                    start=r.start,
                    end=r.end,
                    score=float(r.score),
                    triggered=r.score >= rule.threshold,
                    recognizer=str(meta.get("recognizer_name", "")),
                )
            )
        findings = []
        for c in resolve_overlaps(candidates):
            rule = rules[c.entity]
            findings.append(
                Finding(
                    check=self.name,
                    label=c.entity,
                    score=c.score,
                    threshold=rule.threshold,
                    triggered=c.triggered,
                    action=rule.action,
                    engine=self.engine,
                    span=Span(*item.normalized.to_original(*view.to_normalized(c.start, c.end))),
                    detail={"redact_with": rule.redact_with, "recognizer": c.recognizer},
                )
            )
        return findings
