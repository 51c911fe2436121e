"""Toxicity check: a fast lexical tier, then an optional Detoxify classifier tier.

Tier one is alt-profanity-check (a linear model on character n-grams, about
a millisecond per text). Tier two is a Detoxify checkpoint: either a local
folder written by ``assay models train-toxicity`` (MiniLM fine-tuned on
Jigsaw-format data) or one of Detoxify's published names, which only load
when already cached because Assay never downloads models at run time.
Both tiers score ``normalized.folded`` so leetspeak and zero-width splits
do not slip past them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from evaluators.batched_encode import encode_batched
from evaluators.checks.base import CheckBase, CheckInput
from evaluators.checks.config import CheckConfigBase, LabelRule, Strict
from evaluators.checks.toxicity_loading import _Classifier, _load_classifier, resolve_checkpoint
from evaluators.errors import CheckFailed, ModelMissingError
from evaluators.findings import Action, Finding
from evaluators.models import shared_model
from evaluators.onnx_models import onnx_enabled
from evaluators.settings import evaluator_settings, resolve_device

# Assay's abuse labels (the default abuse-minilm checkpoint) and Detoxify's Jigsaw labels.
ToxicityLabel = Literal[
    "toxicity",
    "hate",
    "insult",
    "threat",
    "sexual",
    "profanity",
    "severe_toxicity",
    "obscene",
    "identity_attack",
]

PROFANITY_ENGINE = "alt-profanity-check"
DEFAULT_CHECKPOINT = "abuse-minilm"


def abuse_default_labels() -> dict[ToxicityLabel, LabelRule]:
    """Rules for Assay's abuse labels when a policy names none: block hate and threats, flag
    insults and sexual content, report profanity and overall toxicity without acting on them."""
    return {
        "hate": LabelRule(threshold=0.5, action=Action.BLOCK),
        "threat": LabelRule(threshold=0.5, action=Action.BLOCK),
        "insult": LabelRule(threshold=0.5, action=Action.FLAG),
        "sexual": LabelRule(threshold=0.5, action=Action.FLAG),
        "profanity": LabelRule(threshold=0.5, action=Action.ALLOW),
        "toxicity": LabelRule(threshold=0.5, action=Action.ALLOW),
    }


def jigsaw_default_labels() -> dict[ToxicityLabel, LabelRule]:
    """Rules for Detoxify's Jigsaw labels when a policy names none."""
    return {
        "toxicity": LabelRule(threshold=0.8, action=Action.FLAG),
        "severe_toxicity": LabelRule(threshold=0.5, action=Action.BLOCK),
        "obscene": LabelRule(threshold=0.8, action=Action.FLAG),
        "threat": LabelRule(threshold=0.5, action=Action.BLOCK),
        "insult": LabelRule(threshold=0.8, action=Action.FLAG),
        "identity_attack": LabelRule(threshold=0.5, action=Action.FLAG),
    }


class ProfanityTier(Strict):
    """The fast lexical tier (alt-profanity-check), scored as label ``toxicity``."""

    enabled: bool = Field(default=True, description="Run the profanity tier.")
    threshold: float = Field(
        default=0.8,
        ge=0.0,
        le=1.0,
        description="Profanity probability at or above which it triggers.",
    )
    action: Action = Field(
        default=Action.FLAG,
        description="What a triggered profanity score does: allow, flag or block.",
    )


class DetoxifyTier(Strict):
    """The classifier tier: a Detoxify checkpoint scoring the six Jigsaw labels."""

    checkpoint: str = Field(
        min_length=1,
        description=(
            "A local checkpoint folder written by `assay models train-toxicity` (relative paths "
            "resolve against the project root, then the model directory), or a Detoxify name "
            "(original, unbiased, ...) that is already in the torch hub cache; Assay never "
            "downloads models at run time."
        ),
    )
    device: str = Field(
        default="auto",
        description="Torch device: auto (the evaluator setting, CUDA when present), cpu or cuda.",
    )
    batch_size: int = Field(default=32, ge=1, le=1024, description="Texts per forward pass.")
    max_length: int = Field(
        default=256, ge=8, le=4096, description="Tokens kept per text; longer texts are truncated."
    )
    quantize_int8: bool = Field(
        default=False,
        description="Dynamic int8 quantization of Linear layers (CPU only; ignored on CUDA).",
    )


class ToxicityConfig(CheckConfigBase):
    """Toxicity check: a profanity tier, a Detoxify tier, or both."""

    check: Literal["toxicity"] = Field(description="Check name: toxicity.")
    profanity: ProfanityTier | None = Field(
        default_factory=ProfanityTier,
        description="The fast lexical tier; null to turn it off.",
    )
    detoxify: DetoxifyTier | None = Field(
        default=None, description="The classifier tier; null (the default) to leave it off."
    )
    labels: dict[ToxicityLabel, LabelRule] | None = Field(
        default=None,
        description=(
            "Threshold and action per classifier label; labels left out are not reported. Null "
            "(the default) takes every label the checkpoint scores with built-in rules: for "
            "Assay's abuse labels, hate and threat block, insult and sexual flag, profanity and "
            "toxicity are reported only."
        ),
    )
    escalate_above: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description=(
            "When set, the Detoxify tier only scores texts whose profanity score is at or "
            "above this value; null scores every text with both tiers."
        ),
    )

    @model_validator(mode="after")
    def _consistent(self) -> ToxicityConfig:
        profanity_on = self.profanity is not None and self.profanity.enabled
        if not profanity_on and self.detoxify is None:
            raise ValueError("toxicity needs at least one tier: enable profanity or configure detoxify")
        # Toxicity scores whole texts, so there is no span to redact.
        if self.profanity is not None and self.profanity.action is Action.REDACT:
            raise ValueError(
                "profanity.action: redact is not valid for toxicity (it finds no spans); use flag or block"
            )
        bad = sorted(name for name, rule in (self.labels or {}).items() if rule.action is Action.REDACT)
        if bad:
            raise ValueError(
                f"labels {', '.join(bad)}: redact is not valid for toxicity (it finds no spans); "
                "use flag or block"
            )
        if self.escalate_above is not None:
            if not profanity_on:
                raise ValueError("escalate_above needs the profanity tier enabled")
            if self.detoxify is None:
                raise ValueError("escalate_above needs a detoxify tier to escalate to")
        if self.detoxify is not None and self.labels is not None and not self.labels:
            raise ValueError("labels must name at least one label for the detoxify tier")
        return self


def _load_profanity() -> Callable[[list[str]], Any]:
    # Importing the module loads its vectorizer and model (joblib files in the wheel).
    from profanity_check import predict_prob, profanity_check

    return _linear_profanity(profanity_check.vectorizer, profanity_check.model) or predict_prob


def _linear_profanity(vectorizer: Any, model: Any) -> Callable[[list[str]], Any] | None:
    """alt-profanity-check's probabilities without sklearn's per-call overhead, or None.

    Its model averages sigmoid-calibrated linear SVMs; ``predict_proba`` validates its input
    once per SVM and costs about 9 ms per call whatever the batch (0.3 ms per text at 32, 9 ms
    for one text). The same arithmetic on the stacked weights is one sparse product: the same
    probabilities (to float rounding) in well under a millisecond. None when the model is not
    of that shape (another version of the package): ``predict_prob`` then.
    """
    import numpy as np
    from scipy.special import expit

    try:
        members = list(model.calibrated_classifiers_)
        binary = list(model.classes_) == [0, 1] and model.method == "sigmoid"
        calibrators = [m.calibrators[0] for m in members]
        if not binary or any(len(m.calibrators) != 1 for m in members):
            return None
        weights = np.stack([np.asarray(m.estimator.coef_, dtype=np.float64).ravel() for m in members], axis=1)
        intercepts = np.array([float(np.ravel(m.estimator.intercept_)[0]) for m in members])
        a = np.array([float(c.a_) for c in calibrators])
        b = np.array([float(c.b_) for c in calibrators])
    except (AttributeError, IndexError, TypeError, ValueError):
        return None

    def predict_prob(texts: list[str]) -> Any:
        decision = np.asarray(vectorizer.transform(texts) @ weights) + intercepts
        return expit(-(a * decision + b)).mean(axis=1)

    return predict_prob


class ToxicityCheck(CheckBase):
    """Scores each text with the enabled tiers; one finding per label per engine."""

    name: ClassVar[str] = "toxicity"
    # The classifier reads 256 tokens, and one threat in 900 harmless characters scores 0.42 read whole
    # (0.97 in a 400-character window): longer texts come in paragraph-sized windows.
    window_chars: ClassVar[int | None] = 400
    config: ToxicityConfig

    def __init__(self, config: ToxicityConfig) -> None:
        super().__init__(config)
        self._profanity: Callable[[list[str]], Any] | None = None
        self._classifier: _Classifier | None = None
        self._labels: dict[str, LabelRule] = {}

    def _load(self) -> None:
        cfg = self.config
        if cfg.profanity is not None and cfg.profanity.enabled:
            self._profanity = shared_model(PROFANITY_ENGINE, _load_profanity)
        tier = cfg.detoxify
        if tier is None:
            return
        folder = resolve_checkpoint(tier.checkpoint)
        device = resolve_device(evaluator_settings().device if tier.device == "auto" else tier.device)
        where = tier.checkpoint if folder is None else str(folder)
        precision = "int8" if tier.quantize_int8 and device == "cpu" else "fp32"
        if precision == "fp32" and onnx_enabled(device):
            precision += "-onnx"
        key = f"detoxify:{where}:{device}:{precision}"
        classifier = shared_model(key, lambda: _load_classifier(tier, folder, device))
        scored = classifier.detox.class_names
        if cfg.labels is None:
            defaults = abuse_default_labels() if "hate" in scored else jigsaw_default_labels()
            self._labels = {label: rule for label, rule in defaults.items() if label in scored}
        else:
            self._labels = {str(label): rule for label, rule in cfg.labels.items()}
        unknown = [label for label in self._labels if label not in scored]
        if unknown:
            raise ModelMissingError(
                f"checkpoint {tier.checkpoint!r} does not score {', '.join(unknown)} "
                f"(it scores {', '.join(classifier.detox.class_names)}); drop them from labels",
                field="labels",
            )
        self._classifier = classifier

    @property
    def labels(self) -> dict[str, LabelRule]:
        """The classifier labels this check reports and their rules, once loaded."""
        self._ensure_loaded()
        return dict(self._labels)

    @property
    def engines(self) -> list[str]:
        """Engine names this check reports, once loaded."""
        self._ensure_loaded()
        out = [PROFANITY_ENGINE] if self._profanity is not None else []
        if self._classifier is not None:
            out.append(self._classifier.engine)
        return out

    def evaluate(self, batch: Sequence[CheckInput]) -> list[list[Finding]]:
        self._ensure_loaded()
        if not batch:
            return []
        cfg = self.config
        texts = [item.normalized.folded for item in batch]
        results: list[list[Finding]] = [[] for _ in texts]

        profanity_scores: list[float] | None = None
        if self._profanity is not None and cfg.profanity is not None:
            tier = cfg.profanity
            try:
                profanity_scores = [float(s) for s in self._profanity(texts)]
            except Exception as exc:
                raise CheckFailed(f"profanity scoring failed: {exc}", engine=PROFANITY_ENGINE) from exc
            for out, score in zip(results, profanity_scores, strict=True):
                out.append(
                    Finding(
                        check=self.name,
                        label="toxicity",
                        score=score,
                        threshold=tier.threshold,
                        triggered=score >= tier.threshold,
                        action=tier.action,
                        engine=PROFANITY_ENGINE,
                    )
                )

        if self._classifier is not None:
            if cfg.escalate_above is not None and profanity_scores is not None:
                chosen = [i for i, s in enumerate(profanity_scores) if s >= cfg.escalate_above]
            else:
                chosen = list(range(len(texts)))
            scores = self._classify([texts[i] for i in chosen])
            classes = self._classifier.detox.class_names
            for i, row in zip(chosen, scores, strict=True):
                for label, rule in self._labels.items():
                    score = row[classes.index(label)]
                    results[i].append(
                        Finding(
                            check=self.name,
                            label=label,
                            score=score,
                            threshold=rule.threshold,
                            triggered=score >= rule.threshold,
                            action=rule.action,
                            engine=self._classifier.engine,
                        )
                    )
        return results

    def _classify(self, texts: list[str]) -> list[list[float]]:
        """Sigmoid scores per text, in order, from length-sorted batched forward passes."""
        assert self._classifier is not None
        assert self.config.detoxify is not None
        if not texts:
            return []
        import torch

        clf = self._classifier
        tier = self.config.detoxify
        model = clf.model

        def forward(enc: Any, _batch: list[str]) -> list[list[float]]:
            rows: list[list[float]] = torch.sigmoid(model(**enc)[0].float()).cpu().tolist()
            return rows

        try:
            return encode_batched(
                texts,
                clf.detox.tokenizer,
                forward,
                batch_size=tier.batch_size,
                max_length=tier.max_length,
                device=clf.device,
                lock=clf.tokenizer_lock,
            )
        except Exception as exc:
            raise CheckFailed(f"detoxify scoring failed: {exc}", engine=clf.engine) from exc
