"""The policy's ``drift:`` block: what is recorded, and the threshold of every drift statistic."""

from __future__ import annotations

from fnmatch import fnmatchcase

from pydantic import Field

from evaluators.checks.config import Strict


class DriftThresholds(Strict):
    """Each statistic's threshold; a signal drifts when one is crossed (and, if tested, p < alpha)."""

    psi: float = Field(
        default=0.2, gt=0, description="Population stability index of a score or length distribution."
    )
    ks: float = Field(
        default=0.1,
        gt=0,
        le=1,
        description="Kolmogorov-Smirnov distance (largest CDF gap) of a distribution.",
    )
    js: float = Field(
        default=0.1, gt=0, le=1, description="Jensen-Shannon distance (base 2) of the action or entity mix."
    )
    mmd: float = Field(
        default=0.01, gt=0, description="Squared maximum mean discrepancy of the embeddings (RBF kernel)."
    )


class DriftPolicy(Strict):
    """Drift recording, per-result scores and report thresholds for traffic under this policy."""

    enabled: bool = Field(
        default=True, description="Record drift events and score results; off: results say 'disabled'."
    )
    embed: bool = Field(
        default=True,
        description=(
            "Embed each filtered text (one MiniLM pass) for novelty scores and the embedding signal; "
            "off: scores, mixes and lengths only, at microseconds per text."
        ),
    )
    embed_inline: bool | None = Field(
        default=None,
        description=(
            "true: embed on the request path, so each result carries its novelty score (one MiniLM "
            "pass, about 12 ms per text on 2 CPU cores); false: the recorder's background thread "
            "embeds in batches after the reply, so baselines and reports still get embeddings and a "
            "result's novelty is null with a detail that says why; null (default): inline for "
            "generation jobs and audits, where one pass is small beside decoding, and after the reply "
            "for /v1/moderate calls, which must be fast."
        ),
    )

    embed_sample: float = Field(
        default=1.0,
        gt=0,
        le=1,
        description=(
            "Share of the texts embedded after the reply (each one independently, so the stored "
            "embeddings stay a uniform sample): below 1 bounds the encoder's CPU, about 10 ms per "
            "text on 2 cores, at high request rates; texts embedded inline for novelty always are."
        ),
    )

    def inline_for(self, source: str) -> bool:
        """Whether a text from ``source`` (moderation, generation, audit) is embedded inline."""
        return self.embed_inline if self.embed_inline is not None else source != "moderation"

    baseline: str | None = Field(
        default=None,
        description="Name of the stored baseline results are scored against; default the newest one.",
    )
    thresholds: DriftThresholds = Field(
        default_factory=DriftThresholds, description="Threshold of each statistic."
    )
    overrides: dict[str, DriftThresholds] = Field(
        default_factory=dict,
        description='Thresholds for single signals, by name, e.g. "output.scores.toxicity.hate".',
    )
    alpha: float = Field(
        default=0.01, gt=0, lt=1, description="Significance level of the KS, chi-square and MMD tests."
    )
    min_samples: int = Field(
        default=100, ge=10, description="Fewest events per side for a signal to get a verdict."
    )
    scores: tuple[str, ...] = Field(
        default=("*",), description="Score signals compared, as glob patterns over 'check.label'."
    )
    exclude_scores: tuple[str, ...] = Field(
        default=("pii.*",),
        description="Score signals left out (PII confidence; the entity mix covers PII).",
    )
    novelty_percentile: float = Field(
        default=99.0, gt=0, lt=100, description="A result at or above this novelty percentile is unusual."
    )
    permutations: int = Field(default=200, ge=50, le=5000, description="Permutations of the MMD test.")
    embedding_sample: int = Field(
        default=500, ge=50, le=5000, description="Embeddings drawn per side for the MMD test."
    )

    def thresholds_for(self, signal: str) -> DriftThresholds:
        return self.overrides.get(signal, self.thresholds)

    def compares(self, score: str) -> bool:
        """Whether the score signal ``check.label`` is compared."""
        return any(fnmatchcase(score, p) for p in self.scores) and not any(
            fnmatchcase(score, p) for p in self.exclude_scores
        )
