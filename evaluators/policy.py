"""Policy files: a frozen, validated model built from YAML, and its loader.

The policy is data; ``evaluators.engine.PolicyEngine`` is the runtime built
from it. Every field carries a description, exported as JSON Schema by
``assay policy schema`` for editors.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AfterValidator, Field, ValidationError, field_validator, model_validator

from evaluators.audit.gates import Gate, parse_gate
from evaluators.checks.config import OnError, Strict
from evaluators.contracts import SamplingOverrides, SamplingParams
from evaluators.drift.config import DriftPolicy
from evaluators.errors import InputError, LimitExceeded, Location, PolicyError, PolicyNotFound, Problem
from evaluators.findings import Action
from evaluators.registry import check_config_union
from evaluators.yamlsource import SourceMap, YamlProblem, load_yaml, read_text

if TYPE_CHECKING:
    CheckConfig = Any
else:
    # Built from the registry, so a new check needs no edit here.
    CheckConfig = Annotated[check_config_union(), Field(discriminator="check")]


def _valid_gate(text: str) -> str:
    parse_gate(text)  # per item, so a bad gate is reported at its own line
    return text


class Limits(Strict):
    """Size limits on what a policy accepts."""

    max_chars: int = Field(
        default=20_000, gt=0, le=1_000_000, description="Longest text accepted, in characters."
    )
    max_batch: int = Field(default=64, gt=0, le=10_000, description="Most texts in one batch call.")


class Range(Strict):
    """Inclusive bounds for a numeric generation parameter."""

    min: float | None = Field(default=None, description="Smallest value allowed.")
    max: float | None = Field(default=None, description="Largest value allowed.")

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("min must not exceed max")
        return self


class GenerationLimits(Strict):
    """Bounds a generation request must stay within; outside them it gets a 422."""

    temperature: Range = Field(default=Range(min=0.0, max=2.0), description="Allowed temperature.")
    top_k: Range = Field(default=Range(min=0, max=1000), description="Allowed top_k.")
    top_p: Range = Field(default=Range(min=0.0, max=1.0), description="Allowed top_p.")
    max_new_tokens: Range = Field(default=Range(min=1, max=1024), description="Allowed max_new_tokens.")
    repetition_penalty: Range = Field(
        default=Range(min=0.5, max=2.0), description="Allowed repetition_penalty."
    )
    max_stop_sequences: int = Field(default=8, ge=0, description="Most stop sequences a request may send.")


class GenerationPolicy(Strict):
    """How generation jobs under this policy run."""

    defaults: SamplingParams = Field(
        default_factory=SamplingParams, description="Sampling defaults for what a request leaves out."
    )
    limits: GenerationLimits = Field(default_factory=GenerationLimits, description="Parameter limits.")
    return_raw_output: bool = Field(
        default=False,
        description="Return the unfiltered model output beside the filtered one (off: only filtered).",
    )

    def resolve(
        self, requested: SamplingOverrides | Mapping[str, Any] | None, *, policy: str = ""
    ) -> SamplingParams:
        """The request's parameters over these defaults; ``LimitExceeded`` outside the limits.

        The one place policy limits apply: the API calls it before queueing (a 422
        instead of a failed job) and the job carries the result.
        """
        try:
            overrides = (
                requested
                if isinstance(requested, SamplingOverrides)
                else SamplingOverrides.model_validate(dict(requested or {}))
            )
        except ValidationError as exc:
            raise InputError(f"invalid generation parameters: {_brief(exc)}") from exc
        values = {**self.defaults.model_dump(), **overrides.given()}
        problems: list[str] = []
        for name in ("temperature", "top_k", "top_p", "max_new_tokens", "repetition_penalty"):
            bounds: Range = getattr(self.limits, name)
            value = values[name]
            if bounds.min is not None and value < bounds.min:
                problems.append(f"{name}={value} is below the policy minimum {bounds.min:g}")
            if bounds.max is not None and value > bounds.max:
                problems.append(f"{name}={value} is above the policy maximum {bounds.max:g}")
        most = self.limits.max_stop_sequences
        if len(values["stop"]) > most:
            problems.append(f"{len(values['stop'])} stop sequences sent; the policy allows {most}")
        if problems:
            raise LimitExceeded("; ".join(problems), policy=policy)
        try:
            return SamplingParams.model_validate(values)
        except ValidationError as exc:
            raise InputError(f"invalid generation parameters: {_brief(exc)}") from exc


def _brief(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'params'}: {e['msg']}" for e in exc.errors())


class FairnessPolicy(Strict):
    """How counterfactual fairness requests of generation jobs are run and judged."""

    samples_per_group: int = Field(default=3, ge=1, le=16, description="Generations per group variant.")
    metric: Literal["toxicity", "identity_attack", "refusal_rate", "length"] = Field(
        default="toxicity", description="The per-group measure whose gap the threshold applies to."
    )
    max_gap: float = Field(default=0.1, ge=0.0, description="Largest allowed gap between group means.")
    action: Action = Field(default=Action.FLAG, description="What a gap over max_gap does to the job.")
    bootstrap: int = Field(default=1000, ge=100, le=20_000, description="Bootstrap resamples for intervals.")


class OperatingPoint(Strict):
    """Precision and recall of one threshold on the labelled examples, with 95% Wilson intervals."""

    threshold: float = Field(ge=0.0, le=1.0, description="The threshold these figures were measured at.")
    selected: int = Field(ge=0, description="Examples scoring at or above the threshold.")
    true_positives: int = Field(ge=0, description="Selected examples labelled 1.")
    precision: float | None = Field(
        ge=0.0, le=1.0, description="true_positives / selected; null when nothing was selected."
    )
    precision_ci: tuple[float, float] | None = Field(
        description="95% Wilson interval of the precision; null when nothing was selected."
    )
    recall: float = Field(ge=0.0, le=1.0, description="true_positives / positives.")
    recall_ci: tuple[float, float] = Field(description="95% Wilson interval of the recall.")


class HeldOut(Strict):
    """Cross-validated figures: thresholds fitted on k-1 folds, measured on the fold left out, pooled."""

    folds: int = Field(ge=2, description="Number of stratified folds.")
    precision: float | None = Field(
        ge=0.0, le=1.0, description="Pooled held-out precision; null when no fold selected anything."
    )
    precision_ci: tuple[float, float] | None = Field(description="95% Wilson interval of the precision.")
    recall: float = Field(ge=0.0, le=1.0, description="Pooled held-out recall.")
    recall_ci: tuple[float, float] = Field(description="95% Wilson interval of the recall.")


class ScoreScaling(Strict):
    """Whether a monotone rescaling of the scores would make them better probabilities (report only).

    A monotone map does not change which texts a threshold selects, so findings keep the raw scores.
    """

    brier: dict[Literal["raw", "platt", "isotonic"], float] = Field(
        description="Held-out Brier score per method (lower is better)."
    )
    log_loss: dict[Literal["raw", "platt", "isotonic"], float] = Field(
        description="Held-out log-loss per method (lower is better)."
    )
    best: Literal["raw", "platt", "isotonic"] = Field(description="The method with the lowest Brier score.")


class CalibratedThreshold(Strict):
    """One threshold fitted by `assay calibrate` and the operating point it reached."""

    field: str = Field(
        min_length=1,
        description="Dotted path of the threshold in this policy, e.g. output.1.profanity.threshold.",
    )
    stage: Literal["input", "output"] = Field(description="The stage whose check was calibrated.")
    check: str = Field(min_length=1, description="Check name of the findings fitted.")
    label: str = Field(min_length=1, description="Label of the findings fitted.")
    engine: str = Field(min_length=1, description="Engine that produced the scores fitted.")
    n: int = Field(ge=1, description="Labelled examples used.")
    positives: int = Field(ge=0, description="Examples labelled 1.")
    reached: bool = Field(
        description="Whether the target was met; when not, the previous threshold was kept."
    )
    before: OperatingPoint = Field(description="The previous threshold on these examples.")
    after: OperatingPoint = Field(description="The fitted threshold on these examples (in-sample).")
    held_out: HeldOut | None = Field(
        default=None,
        description="Cross-validated estimate of the fitting procedure; null when too few examples.",
    )
    scaling: ScoreScaling | None = Field(
        default=None,
        description="Held-out comparison of raw, Platt and isotonic scores; null when not measured.",
    )


class Calibration(Strict):
    """How `assay calibrate` derived this policy version's thresholds from labelled examples."""

    target: str = Field(
        pattern=r"^(precision>=|recall>=|fbeta=)[0-9.e+-]+$|^f1$",
        description="The target the thresholds were fitted to: precision>=P, recall>=R, f1 or fbeta=B.",
    )
    data: str = Field(min_length=1, description="File name of the labelled CSV.")
    data_sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the labelled CSV's bytes.")
    rows: int = Field(ge=1, description="Rows in the labelled CSV.")
    created: datetime = Field(description="When the calibration ran (UTC).")
    based_on_version: str = Field(min_length=1, description="Version of the policy that was calibrated.")
    based_on_sha256: str = Field(
        pattern=r"^[0-9a-f]{64}$", description="sha256 of the policy file that was calibrated."
    )
    thresholds: tuple[CalibratedThreshold, ...] = Field(
        min_length=1, description="One entry per fitted threshold."
    )


class Policy(Strict):
    """A guardrail policy: which checks run on inputs and outputs, and what they do."""

    name: str = Field(
        pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$", description="Unique policy name used in requests."
    )
    version: str = Field(min_length=1, max_length=32, description="Version of this policy, e.g. 1.2.0.")
    description: str | None = Field(default=None, description="What the policy is for.")
    on_error: OnError = Field(
        default="block",
        description="Default for checks that cannot run: block (fail closed), flag, or allow (fail open).",
    )
    store_raw_text: bool = Field(
        default=False,
        description="Allow raw text in logs and stored records. Off: only scores, hashes and redacted text.",
    )
    limits: Limits = Field(default_factory=Limits, description="Size limits on requests.")
    input: tuple[CheckConfig, ...] = Field(default=(), description="Checks run on prompts and user input.")
    output: tuple[CheckConfig, ...] = Field(default=(), description="Checks run on model outputs.")
    generation: GenerationPolicy = Field(
        default_factory=GenerationPolicy, description="Defaults and limits for generation jobs."
    )
    fairness: FairnessPolicy = Field(
        default_factory=FairnessPolicy, description="Counterfactual fairness settings for generation jobs."
    )
    gates: tuple[Annotated[str, AfterValidator(_valid_gate)], ...] = Field(
        default=(),
        description=(
            "Release gates an audit run under this policy must pass, e.g. 'toxicity.flag_rate <= 0.01', "
            "'pii.leak_rate == 0', 'fairness.max_gap <= 0.05'. A metric the run did not measure fails."
        ),
    )
    drift: DriftPolicy = Field(
        default_factory=DriftPolicy,
        description=(
            "Drift: whether traffic under this policy is recorded and each result scored against the "
            "current baseline, and the thresholds of the drift report statistics."
        ),
    )
    calibration: Calibration | None = Field(
        default=None,
        description=(
            "Written by `assay calibrate`: the labelled data, target and operating point of each fitted "
            "threshold. Each recorded threshold must match the policy's, so a hand edit that makes the "
            "record stale is an error."
        ),
    )

    @field_validator("input", "output")
    @classmethod
    def _one_per_check(cls, checks: tuple[Any, ...]) -> tuple[Any, ...]:
        seen: set[str] = set()
        for c in checks:
            if c.check in seen:
                raise ValueError(f"check {c.check!r} is listed twice in this stage")
            seen.add(c.check)
        return checks

    @model_validator(mode="after")
    def _calibration_matches(self) -> Policy:
        for i, t in enumerate(self.calibration.thresholds if self.calibration else ()):
            value = _at_path(self, t.field)
            if value != t.after.threshold:
                raise ValueError(
                    f"calibration.thresholds.{i}: {t.field} is {value!r} but the calibration recorded "
                    f"{t.after.threshold}; run `assay calibrate` again or remove the calibration block"
                )
        return self

    def checks(self, stage: Literal["input", "output"]) -> tuple[Any, ...]:
        return tuple(c for c in getattr(self, stage) if c.enabled)

    def parsed_gates(self) -> tuple[Gate, ...]:
        return tuple(parse_gate(g) for g in self.gates)


def _at_path(node: Any, dotted: str) -> Any:
    """The value at a dotted path (``output.1.profanity.threshold``) in a policy, or None."""
    for part in dotted.split("."):
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, tuple):
            node = node[int(part)] if part.isdigit() and int(part) < len(node) else None
        else:
            node = getattr(node, part, None)
        if node is None:
            return None
    return node


@dataclass(frozen=True)
class LoadedPolicy:
    """A validated policy plus where it came from."""

    policy: Policy
    path: Path
    sha256: str
    source: SourceMap
    data: Any

    @property
    def name(self) -> str:
        return self.policy.name

    def locate(self, *loc: str | int) -> Location:
        return self.source.locate(loc, self.data)

    def identity(self) -> dict[str, str]:
        return {"name": self.policy.name, "version": self.policy.version, "sha256": self.sha256}


def parse_policy(text: str, file: str) -> LoadedPolicy:
    """Validate policy ``text``; raise ``PolicyError`` naming file, line and field."""
    try:
        data, source = load_yaml(text, file)
    except YamlProblem as exc:
        raise PolicyError([exc.problem]) from None
    if not isinstance(data, dict):
        raise PolicyError([Problem(Location(file, 1, 1), "a policy must be a YAML mapping")])
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        problems = [
            Problem(source.locate(err["loc"], data, missing=err["type"] == "missing"), _message(err))
            for err in exc.errors()
        ]
        raise PolicyError(problems) from None
    sha = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return LoadedPolicy(policy=policy, path=Path(file), sha256=sha, source=source, data=data)


def _message(err: Any) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown key"
    if err["type"] == "union_tag_invalid":
        return (
            f"unknown check {err['input'].get('check')!r}"
            if isinstance(err.get("input"), dict)
            else err["msg"]
        )
    msg = str(err["msg"])
    if "input" in err and not isinstance(err["input"], dict | list):
        msg += f" (got {err['input']!r})"
    return msg


def load_policy_file(path: Path) -> LoadedPolicy:
    try:
        # Bounded and UTF-8-checked: a policy file may come from someone else.
        text = read_text(path)
    except YamlProblem as exc:
        raise PolicyError([exc.problem]) from None
    return parse_policy(text, str(path))


def load_policy_dir(directory: Path) -> dict[str, LoadedPolicy]:
    """Load every ``*.yaml``/``*.yml`` policy in ``directory``; all problems are reported together."""
    if not directory.is_dir():
        raise PolicyError([Problem(Location(str(directory)), "policy directory does not exist")])
    loaded: dict[str, LoadedPolicy] = {}
    problems: list[Problem] = []
    for path in sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")]):
        try:
            lp = load_policy_file(path)
        except PolicyError as exc:
            problems.extend(exc.problems)
            continue
        if lp.name in loaded:
            problems.append(
                Problem(
                    lp.locate("name"),
                    f"policy name {lp.name!r} already used by {loaded[lp.name].path}",
                )
            )
            continue
        loaded[lp.name] = lp
    if problems:
        raise PolicyError(problems)
    return loaded


def policy_json_schema() -> dict[str, Any]:
    schema = Policy.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Assay policy"
    return schema


class PolicyStore:
    """The policies a process serves, by name."""

    def __init__(self, policies: dict[str, LoadedPolicy]) -> None:
        self._policies = dict(policies)

    def get(self, name: str) -> LoadedPolicy:
        try:
            return self._policies[name]
        except KeyError:
            raise PolicyNotFound(
                f"no policy named {name!r}; known: {', '.join(sorted(self._policies)) or 'none'}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._policies)

    def __iter__(self) -> Iterator[LoadedPolicy]:
        return iter(self._policies.values())

    def __len__(self) -> int:
        return len(self._policies)
