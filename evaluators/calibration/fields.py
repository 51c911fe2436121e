"""Which policy field sets which threshold, and which findings it applies to."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from evaluators.calibration.labelled import Stage

# Engine of the toxicity check's lexical tier; it reports label "toxicity" beside the classifier's.
PROFANITY_ENGINE = "alt-profanity-check"


@dataclass(frozen=True)
class ThresholdField:
    """One threshold in a policy and the findings it applies to."""

    stage: Stage
    index: int
    """Position of the check in the stage's list."""
    check: str
    label: str
    path: tuple[str, ...]
    """Path inside the check's config, e.g. ``("profanity", "threshold")``."""
    current: float | None
    """The threshold in force; None until scoring when the check takes it from its model."""
    engine: str | None = None
    """Only findings from this engine; None: any engine except ``not_engine``."""
    not_engine: str | None = None
    fill: tuple[str, ...] | None = None
    """A container that is null in the policy (the check's built-in rules apply); writing the
    threshold writes out those rules, as the findings carry them, into it."""

    @property
    def dotted(self) -> str:
        return ".".join([self.stage, str(self.index), *self.path])

    def matches(self, engine: str) -> bool:
        if self.engine is not None:
            return engine == self.engine
        return engine != self.not_engine


def threshold_fields(config: Any, stage: Stage, index: int) -> dict[str, list[ThresholdField]]:
    """The thresholds one check config exposes, by the label its findings carry.

    The toxicity check's lexical tier reports label ``toxicity`` from its own
    threshold (``profanity.threshold``); its classifier tier and other checks
    keep a rule per label in ``labels`` or ``entities``. Written against the
    configs' field names so that a new label needs no change here.
    """
    out: dict[str, list[ThresholdField]] = {}

    def add(
        label: str,
        path: tuple[str, ...],
        current: float,
        engine: str | None = None,
        not_engine: str | None = None,
    ) -> None:
        found = ThresholdField(stage, index, config.check, label, path, float(current), engine, not_engine)
        out.setdefault(label, []).append(found)

    profanity = getattr(config, "profanity", None) if config.check == "toxicity" else None
    lexical = profanity is not None and bool(profanity.enabled)
    if profanity is not None and lexical:
        add("toxicity", ("profanity", "threshold"), profanity.threshold, engine=PROFANITY_ENGINE)
    classifier = config.check != "toxicity" or getattr(config, "detoxify", None) is not None
    for container in ("labels", "entities"):
        rules = getattr(config, container, None)
        if classifier and isinstance(rules, dict):
            for label, rule in rules.items():
                if lexical:
                    add(label, (container, label, "threshold"), rule.threshold, not_engine=PROFANITY_ENGINE)
                else:
                    add(label, (container, label, "threshold"), rule.threshold)
    if config.check == "bias":
        add("identity_attack", ("identity_attack_threshold",), config.identity_attack_threshold)
        add("counterfactual_gap", ("counterfactual_threshold",), config.counterfactual_threshold)
    if config.check == "hallucination":
        add("unsupported_claim", ("threshold",), config.threshold)
    return out


def fields_for(config: Any, stage: Stage, index: int, label: str) -> list[ThresholdField]:
    """The thresholds that ``label``'s findings from this check are compared with (empty: none).

    A toxicity classifier tier with ``labels: null`` reports every label its
    checkpoint scores under built-in rules, known only once the model loads:
    any label is accepted here, and its threshold comes from the findings.
    """
    known = threshold_fields(config, stage, index).get(label, [])
    open_rules = config.check == "toxicity" and getattr(config, "detoxify", None) is not None
    if open_rules and getattr(config, "labels", ...) is None:
        profanity = getattr(config, "profanity", None)
        lexical = profanity is not None and bool(profanity.enabled)
        known = [
            *known,
            ThresholdField(
                stage,
                index,
                config.check,
                label,
                ("labels", label, "threshold"),
                None,
                not_engine=PROFANITY_ENGINE if lexical else None,
                fill=("labels",),
            ),
        ]
    return known
