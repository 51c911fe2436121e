"""Bias check: identity terms, identity-attack score and a counterfactual gap.

Per text:

1. Identity terms from a lexicon (``policies/lexicon/identity_terms.yaml``
   plus the policy's ``extra_terms``) are found as whole words,
   case-insensitively, on the normalised text: which dimensions (gender,
   religion...) and subgroups (female, Muslim...) the text mentions.
2. Identity attack: the text's score from the policy's toxicity models.
   With a Detoxify tier that scores ``identity_attack``, that label, on its
   own. Otherwise the nearest score available (Detoxify ``toxicity``, else the
   alt-profanity-check tier), which knows nothing of groups, so the finding
   only triggers when the text also names a group (pronouns alone do not).
   ``engine`` says which model and label scored.
3. Counterfactual gap: every mentioned subgroup is swapped for each other
   subgroup of its dimension (women -> men, Muslims -> Christians, case
   kept), the variants are re-scored, and the largest absolute score change
   is the gap. A large gap means the score depends on which group is named:
   the scorer treats groups unequally, or the text says something about one
   group it would not say about another. All texts and variants of a batch
   are scored in one call.

A text with no identity terms gets a gap of 0 and a finding that says so;
that is an answer, not an error.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

from pydantic import Field, field_validator, model_validator

from evaluators.checks.base import CheckBase, CheckInput
from evaluators.checks.config import CheckConfigBase
from evaluators.checks.toxicity import PROFANITY_ENGINE, ToxicityCheck, ToxicityConfig
from evaluators.errors import CheckFailed, ModelMissingError
from evaluators.findings import Action, Finding
from evaluators.models import shared_model
from evaluators.normalize import normalize
from evaluators.settings import PROJECT_ROOT

DEFAULT_LEXICON = "policies/lexicon/identity_terms.yaml"
IDENTITY_LABEL = "identity_attack"
# Classifier labels that score attacks on groups, preferred in this order.
GROUP_LABELS: tuple[str, ...] = ("hate", IDENTITY_LABEL)

Terms = dict[str, dict[str, list[str]]]


class BiasConfig(CheckConfigBase):
    """Bias check: identity terms, an identity-attack score and a counterfactual score gap."""

    check: Literal["bias"] = Field(description="Check name: bias.")
    lexicon: str = Field(
        default=DEFAULT_LEXICON,
        min_length=1,
        description=(
            "YAML file of identity terms (dimension -> subgroup -> terms, see the shipped file); "
            "relative paths resolve against the project root."
        ),
    )
    extra_terms: Terms = Field(
        default_factory=dict,
        description=(
            "Terms added by this policy, same layout as the lexicon (dimension -> subgroup -> terms); "
            "appended to the lexicon's lists, so they swap by position like the shipped terms."
        ),
    )
    scorer: Literal["toxicity"] = Field(
        default="toxicity",
        description="What scores texts and their counterfactuals: toxicity (the models of `toxicity`).",
    )
    toxicity: ToxicityConfig | None = Field(
        default=None,
        description=(
            "The toxicity models the scorer runs, as in a toxicity check (`check: toxicity` may be "
            "left out). Null: the alt-profanity-check tier. A detoxify tier scoring hate or "
            "identity_attack gives the identity-attack sub-check its own label."
        ),
    )
    identity_attack_threshold: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="Identity-attack score at or above which the identity_attack finding triggers.",
    )
    counterfactual_threshold: float = Field(
        default=0.2,
        ge=0.0,
        le=1.0,
        description=(
            "Largest score change between a text and its group-swapped variants at or above which "
            "the counterfactual_gap finding triggers."
        ),
    )
    action: Action = Field(
        default=Action.FLAG,
        description="What a triggered finding does: allow, flag or block (no spans to redact).",
    )
    max_variants: int = Field(
        default=32,
        ge=1,
        le=1000,
        description="Most counterfactual variants scored per text; the rest are counted as dropped.",
    )

    @field_validator("toxicity", mode="before")
    @classmethod
    def _tag_toxicity(cls, value: Any) -> Any:
        # The nested block is always a toxicity config; do not make policies repeat the tag.
        if isinstance(value, Mapping) and "check" not in value:
            return {"check": "toxicity", **value}
        return value

    @field_validator("extra_terms")
    @classmethod
    def _terms_not_blank(cls, value: Terms) -> Terms:
        for dim, groups in value.items():
            for group, terms in groups.items():
                if not dim.strip() or not group.strip():
                    raise ValueError("dimension and subgroup names must not be blank")
                if not terms or any(not t.strip() for t in terms):
                    raise ValueError(f"extra_terms.{dim}.{group} needs at least one term and no blank terms")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> BiasConfig:
        if self.action is Action.REDACT:
            raise ValueError(
                "action: redact is not valid for bias (it scores whole texts); use flag or block"
            )
        if self.toxicity is not None and self.toxicity.escalate_above is not None:
            raise ValueError(
                "toxicity.escalate_above is not supported inside bias: a text and its variants must "
                "all be scored by the same model"
            )
        return self

    def scorer_config(self) -> ToxicityConfig:
        return self.toxicity if self.toxicity is not None else ToxicityConfig(check="toxicity")


@dataclass(frozen=True)
class Term:
    """One lexicon entry: its form in the lexicon and where it sits."""

    text: str
    dimension: str
    group: str
    slot: int
    swap_only: bool


@dataclass(frozen=True)
class Mention:
    """One identity term found in a text; offsets are in the text searched."""

    start: int
    end: int
    matched: str
    term: Term


_SEPARATOR = re.compile(r"[\s\-‐‑–]+")


def _key(term: str) -> str:
    # "African-American" and "African American" are one term.
    return " ".join(w for w in _SEPARATOR.split(term.lower()) if w)


def match_case(source: str, target: str) -> str:
    """``target`` in the case of ``source``: UPPER stays upper, Title stays title, else as listed."""
    letters = [c for c in source if c.isalpha()]
    if len(letters) > 1 and all(c.isupper() for c in letters):
        return target.upper()
    if source[:1].isupper():
        return target[:1].upper() + target[1:]
    return target


class Lexicon:
    """Identity terms by dimension and subgroup, a matcher over them, and the swaps between them."""

    def __init__(self, dimensions: Mapping[str, Mapping[str, Sequence[str]]], swap_only: Sequence[str] = ()):
        self.dimensions: dict[str, dict[str, list[str]]] = {
            dim: {group: list(terms) for group, terms in groups.items()} for dim, groups in dimensions.items()
        }
        weak = {_key(t) for t in swap_only}
        self._terms: dict[str, Term] = {}
        for dim, groups in self.dimensions.items():
            for group, terms in groups.items():
                for slot, text in enumerate(terms):
                    key = _key(text)
                    seen = self._terms.get(key)
                    if seen is not None and (seen.dimension, seen.group) != (dim, group):
                        raise ValueError(
                            f"term {text!r} is listed under both {seen.dimension}.{seen.group} and "
                            f"{dim}.{group}; a term must name one subgroup"
                        )
                    if seen is None:  # a repeat within a subgroup swaps by its first slot
                        self._terms[key] = Term(text, dim, group, slot, key in weak)
        # Longest first, so "African Americans" wins over "Americans" at the same place.
        alternatives = sorted(self._terms, key=lambda k: (-len(k), k))
        body = "|".join(_SEPARATOR.pattern.join(re.escape(w) for w in k.split()) for k in alternatives)
        self._pattern = re.compile(rf"(?<!\w)(?:{body})(?!\w)", re.IGNORECASE) if body else None

    def find(self, text: str) -> list[Mention]:
        """Identity terms in ``text``, left to right, without overlaps."""
        if self._pattern is None:
            return []
        return [
            Mention(m.start(), m.end(), m.group(), self._terms[_key(m.group())])
            for m in self._pattern.finditer(text)
        ]

    def counterpart(self, term: Term, group: str) -> str:
        """The term of ``group`` at ``term``'s slot, or that group's first term past its list's end."""
        terms = self.dimensions[term.dimension][group]
        return terms[term.slot] if term.slot < len(terms) else terms[0]

    def swap(self, text: str, mentions: Sequence[Mention], group: str) -> str:
        """``text`` with each of ``mentions`` replaced by its counterpart in ``group``, case kept."""
        out = text
        for m in sorted(mentions, key=lambda m: m.start, reverse=True):
            out = out[: m.start] + match_case(m.matched, self.counterpart(m.term, group)) + out[m.end :]
        return out

    def variants(self, text: str, mentions: Sequence[Mention]) -> list[Variant]:
        """Every mentioned subgroup swapped for each other subgroup of its dimension.

        All mentions of one subgroup swap together, so "women ... she" becomes "men ... he".
        """
        by_group: dict[tuple[str, str], list[Mention]] = {}
        for m in mentions:
            by_group.setdefault((m.term.dimension, m.term.group), []).append(m)
        out = []
        for (dim, group), group_mentions in by_group.items():
            for other in self.dimensions[dim]:
                if other != group:
                    swapped = self.swap(text, group_mentions, other)
                    out.append(Variant(swapped, dim, group, other))
        return out


@dataclass(frozen=True)
class Variant:
    text: str
    dimension: str
    source: str
    target: str


def _lexicon_missing(detail: str, field: str = "lexicon") -> ModelMissingError:
    return ModelMissingError(detail, field=field)


def resolve_lexicon(value: str) -> Path:
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = PROJECT_ROOT / path
    if not path.is_file():
        raise _lexicon_missing(f"identity-term lexicon {value!r} not found (looked for {path})")
    return path


def read_lexicon_file(path: Path) -> tuple[Terms, list[str]]:
    """The dimensions and swap-only terms of a lexicon file; ``ModelMissingError`` if malformed."""
    from evaluators.yamlsource import YamlProblem, load_yaml, read_text

    try:
        # The hardened loader: a policy may point at any lexicon file.
        data, _ = load_yaml(read_text(path), str(path))
    except YamlProblem as exc:
        raise _lexicon_missing(f"cannot read identity-term lexicon: {exc.problem}") from exc
    dims = data.get("dimensions") if isinstance(data, dict) else None
    shape = "dimensions: {dimension: {subgroup: [terms]}}"
    if not isinstance(dims, dict) or not dims:
        raise _lexicon_missing(f"identity-term lexicon {path} needs {shape}")
    for dim, groups in dims.items():
        if not isinstance(groups, dict) or not all(
            isinstance(terms, list) and terms and all(isinstance(t, str) and t.strip() for t in terms)
            for terms in groups.values()
        ):
            raise _lexicon_missing(f"identity-term lexicon {path}: dimension {dim!r} must be {shape}")
    swap_only = data.get("swap_only", [])
    if not isinstance(swap_only, list) or not all(isinstance(t, str) for t in swap_only):
        raise _lexicon_missing(f"identity-term lexicon {path}: swap_only must be a list of terms")
    return {str(d): {str(g): list(ts) for g, ts in gs.items()} for d, gs in dims.items()}, swap_only


def build_lexicon(path: Path, extra_terms: Terms) -> Lexicon:
    dims, swap_only = read_lexicon_file(path)
    for dim, groups in extra_terms.items():
        for group, terms in groups.items():
            dims.setdefault(dim, {}).setdefault(group, []).extend(terms)
    try:
        return Lexicon(dims, swap_only)
    except ValueError as exc:
        raise _lexicon_missing(f"{path}: {exc}", field="extra_terms" if extra_terms else "lexicon") from exc


class Scorer(Protocol):
    """Scores texts in one call; ``engine`` names the model and label."""

    engine: str
    label: str

    def load(self) -> None: ...

    def score(self, texts: Sequence[str]) -> list[float]: ...


class ToxicityScorer:
    """A ``ToxicityCheck`` read as one score per text: identity_attack when Detoxify scores it."""

    def __init__(self, config: ToxicityConfig) -> None:
        self.check = ToxicityCheck(config)
        self._engine = PROFANITY_ENGINE
        self.engine = PROFANITY_ENGINE
        self.label = "toxicity"

    def load(self) -> None:
        self.check.load()
        classifiers = [e for e in self.check.engines if e != PROFANITY_ENGINE]
        labels = self.check.labels
        if classifiers:
            self._engine = classifiers[0]
            self.label = next(
                (lbl for lbl in (*GROUP_LABELS, "toxicity") if lbl in labels), next(iter(labels))
            )
        else:
            self._engine = PROFANITY_ENGINE
            self.label = "toxicity"
        self.engine = f"{self._engine}:{self.label}"

    def score(self, texts: Sequence[str]) -> list[float]:
        results = self.check.evaluate([CheckInput(normalize(t)) for t in texts])
        out = []
        for findings in results:
            hit = [f.score for f in findings if f.engine == self._engine and f.label == self.label]
            if len(hit) != 1:
                raise CheckFailed(f"toxicity scorer gave {len(hit)} {self.engine} scores for one text")
            out.append(hit[0])
        return out


class BiasCheck(CheckBase):
    """``identity_attack`` and ``counterfactual_gap`` findings per text."""

    name: ClassVar[str] = "bias"
    config: BiasConfig

    def __init__(self, config: BiasConfig, scorer: Scorer | None = None) -> None:
        super().__init__(config)
        self.scorer: Scorer = scorer if scorer is not None else ToxicityScorer(config.scorer_config())
        self.lexicon: Lexicon | None = None

    def _load(self) -> None:
        cfg = self.config
        path = resolve_lexicon(cfg.lexicon)
        extra = json.dumps(cfg.extra_terms, sort_keys=True)
        # Keyed on content, so an edited lexicon file is re-read by the next policy load.
        digest = hashlib.sha256(path.read_bytes() + extra.encode()).hexdigest()[:16]
        self.lexicon = shared_model(f"lexicon:{path}:{digest}", lambda: build_lexicon(path, cfg.extra_terms))
        self.scorer.load()

    def evaluate(self, batch: Sequence[CheckInput]) -> list[list[Finding]]:
        self._ensure_loaded()
        assert self.lexicon is not None
        if not batch:
            return []
        cfg = self.config
        mentions = [self.lexicon.find(item.text) for item in batch]
        variants: list[list[Variant]] = []
        dropped: list[int] = []
        for item, found in zip(batch, mentions, strict=True):
            all_variants = self.lexicon.variants(item.text, found)
            variants.append(all_variants[: cfg.max_variants])
            dropped.append(max(len(all_variants) - cfg.max_variants, 0))

        # One scoring call for every text and every variant of the batch.
        texts = [item.text for item in batch] + [v.text for vs in variants for v in vs]
        try:
            scores = self.scorer.score(texts)
        except CheckFailed:
            raise
        except Exception as exc:
            raise CheckFailed(f"bias scoring failed: {exc}", engine=self.scorer.engine) from exc
        if len(scores) != len(texts):
            raise CheckFailed(
                f"scorer returned {len(scores)} scores for {len(texts)} texts", engine=self.scorer.engine
            )
        original = scores[: len(batch)]
        rest = iter(scores[len(batch) :])
        variant_scores = [[next(rest) for _ in vs] for vs in variants]

        return [
            self._findings(item, found, vs, v_scores, base, n_dropped)
            for item, found, vs, v_scores, base, n_dropped in zip(
                batch, mentions, variants, variant_scores, original, dropped, strict=True
            )
        ]

    def _findings(
        self,
        item: CheckInput,
        mentions: list[Mention],
        variants: list[Variant],
        variant_scores: list[float],
        base: float,
        dropped: int,
    ) -> list[Finding]:
        cfg = self.config
        engine = self.scorer.engine
        groups: dict[str, list[str]] = {}
        for m in mentions:
            if m.term.group not in groups.setdefault(m.term.dimension, []):
                groups[m.term.dimension].append(m.term.group)
        terms = list(dict.fromkeys(m.matched for m in mentions))
        spans = []
        for m in mentions:
            start, end = item.normalized.to_original(m.start, m.end)
            spans.append(
                {
                    "term": m.matched,
                    "dimension": m.term.dimension,
                    "group": m.term.group,
                    "start": start,
                    "end": end,
                }
            )
        names_group = any(not m.term.swap_only for m in mentions)
        # Only a group-aware label (abuse-minilm's hate, Detoxify's identity_attack) knows about
        # groups; any other score counts as an identity attack only when the text names a group.
        gated = self.scorer.label not in GROUP_LABELS
        attack = Finding(
            check=self.name,
            label="identity_attack",
            score=base,
            threshold=cfg.identity_attack_threshold,
            triggered=base >= cfg.identity_attack_threshold and (names_group or not gated),
            action=cfg.action,
            engine=engine,
            detail={
                "sub_check": "identity_attack",
                "terms": terms,
                "groups": groups,
                "mentions": spans,
                "scorer_label": self.scorer.label,
                "needs_group_term": gated,
                "names_group": names_group,
            },
        )
        if not variants:
            gap = Finding(
                check=self.name,
                label="counterfactual_gap",
                score=0.0,
                threshold=cfg.counterfactual_threshold,
                triggered=False,
                action=cfg.action,
                engine=engine,
                detail={"sub_check": "counterfactual", "reason": "no identity terms", "variants": 0},
            )
            return [attack, gap]
        worst = max(range(len(variants)), key=lambda i: abs(variant_scores[i] - base))
        v = variants[worst]
        size = abs(variant_scores[worst] - base)
        gap = Finding(
            check=self.name,
            label="counterfactual_gap",
            score=size,
            threshold=cfg.counterfactual_threshold,
            triggered=size >= cfg.counterfactual_threshold,
            action=cfg.action,
            engine=engine,
            detail={
                "sub_check": "counterfactual",
                "terms": terms,
                "groups": groups,
                "original_score": round(base, 6),
                "variant": v.text,
                "variant_score": round(variant_scores[worst], 6),
                # Signed: > 0 when the swapped text scores higher than the original.
                "delta": round(variant_scores[worst] - base, 6),
                "swap": {"dimension": v.dimension, "from": v.source, "to": v.target},
                "variants": len(variants),
                "variants_dropped": dropped,
            },
        )
        return [attack, gap]
