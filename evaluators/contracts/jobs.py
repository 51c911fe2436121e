"""Generation jobs: sampling parameters, the API's request, and the job the worker runs."""

from __future__ import annotations

from typing import Any, Literal, Self

from pydantic import ConfigDict, Field, field_validator, model_validator

from evaluators.contracts.base import Contract
from evaluators.contracts.schema import json_integer, schema_extra

# Placeholder in a prompt that fairness requests fill per group.
GROUP_PLACEHOLDER = "{group}"


# --------------------------------------------------------------------------- sampling


def _stop_tuple(value: Any) -> Any:
    # A single string is one stop sequence, not a sequence of characters.
    return (value,) if isinstance(value, str) else value


class SamplingParams(Contract):
    """How a job is decoded: the policy's defaults with the request's values over them.

    Defined once: the policy's ``generation.defaults`` is this model, a request's
    ``params`` is ``SamplingOverrides`` (the same fields, all optional), and
    ``GenerationPolicy.resolve`` applies the policy's limits in one place.
    """

    temperature: float = Field(default=0.7, ge=0.0, le=5.0, description="Sampling temperature; 0 is greedy.")
    top_k: int = Field(default=50, ge=0, description="Keep the k most likely tokens; 0 disables.")
    top_p: float = Field(
        default=0.95, ge=0.0, le=1.0, description="Nucleus sampling mass; 1 disables, 0 keeps the top token."
    )
    max_new_tokens: int = Field(default=128, ge=1, description="Most tokens to generate.")
    stop: tuple[str, ...] = Field(default=(), description="Stop sequences; the output is cut before them.")
    seed: int | None = Field(
        default=None, description="Seed for reproducible sampling; sample i of a job uses seed + i."
    )
    repetition_penalty: float = Field(
        default=1.0, gt=0.0, description="Penalty on repeated tokens (HF/CTRL semantics); 1 is none."
    )

    _one_stop = field_validator("stop", mode="before")(_stop_tuple)

    @field_validator("stop")
    @classmethod
    def _non_empty(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(not s for s in value):
            raise ValueError("stop sequences must be non-empty strings")
        return value

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def with_seed_offset(self, offset: int) -> SamplingParams:
        """The same parameters for sample ``offset``: its own reproducible seed."""
        if self.seed is None or offset == 0:
            return self
        return self.model_copy(update={"seed": self.seed + offset})


_STOP = {"type": "string", "minLength": 1}


class SamplingOverrides(Contract):
    """A request's sampling parameters; what it leaves out comes from the policy.

    Strict numbers: ``true`` is not a temperature, nor ``2.5`` a token count.
    """

    # A single stop string is accepted as one sequence; empty ones are refused (SamplingParams).
    model_config = ConfigDict(
        json_schema_extra=schema_extra(
            {
                "properties": {
                    "stop": {
                        "oneOf": [_STOP, {"type": "array", "items": _STOP}, {"type": "null"}],
                    }
                }
            }
        )
    )

    temperature: float | None = Field(
        default=None, strict=True, description="Sampling temperature; 0 is greedy."
    )
    top_k: int | None = Field(default=None, description="Keep the k most likely tokens; 0 disables.")
    top_p: float | None = Field(default=None, strict=True, description="Nucleus sampling mass.")
    max_new_tokens: int | None = Field(default=None, description="Most tokens to generate.")
    stop: tuple[str, ...] | None = Field(default=None, description="Stop sequences, cut from the output.")
    seed: int | None = Field(default=None, description="Seed for reproducible sampling.")
    repetition_penalty: float | None = Field(
        default=None, strict=True, description="Penalty on repeated tokens."
    )

    _one_stop = field_validator("stop", mode="before")(_stop_tuple)
    _integers = field_validator("top_k", "max_new_tokens", "seed", mode="before")(json_integer)

    def given(self) -> dict[str, Any]:
        """The parameters the request set."""
        return self.model_dump(exclude_none=True)


# --------------------------------------------------------------------------- jobs


class ChatMessage(Contract):
    """One chat message."""

    role: Literal["system", "user", "assistant"] = Field(description="Who wrote the message.")
    content: str = Field(description="The message text.")


class FairnessSpec(Contract):
    """Counterfactual fairness: the prompt's {group} slot filled per group."""

    # ``_groups_or_dimension``: a non-empty dimension, or groups.
    model_config = ConfigDict(
        json_schema_extra=schema_extra(
            {
                "anyOf": [
                    {
                        "required": ["dimension"],
                        "properties": {"dimension": {"type": "string", "minLength": 1}},
                    },
                    {"required": ["groups"], "properties": {"groups": {"type": "array"}}},
                ]
            }
        )
    )

    dimension: str | None = Field(default=None, description="gender, race, religion, or your own label.")
    groups: tuple[str, ...] | None = Field(
        default=None, min_length=2, max_length=12, description="Groups to compare; default per dimension."
    )
    samples_per_group: int | None = Field(
        default=None, ge=1, le=16, description="Generations per group; default from the policy."
    )

    _integers = field_validator("samples_per_group", mode="before")(json_integer)

    @model_validator(mode="after")
    def _groups_or_dimension(self) -> FairnessSpec:
        if not self.dimension and not self.groups:
            raise ValueError("fairness needs a dimension or groups")
        return self


_USER_MESSAGE = {"type": "object", "properties": {"role": {"const": "user"}}, "required": ["role"]}
# "Exactly one of prompt or messages, and messages hold a user message", as JSON Schema,
# so generated clients and schema-driven tests know what ``_one_prompt`` accepts.
PROMPT_SCHEMA: dict[str, Any] = {
    "oneOf": [
        {"required": ["prompt"], "properties": {"prompt": {"type": "string"}, "messages": {"type": "null"}}},
        {
            "required": ["messages"],
            "properties": {
                "messages": {"type": "array", "contains": _USER_MESSAGE},
                "prompt": {"type": "null"},
            },
        },
    ]
}


class Prompt(Contract):
    """A plain prompt or chat messages: exactly one of the two."""

    model_config = ConfigDict(json_schema_extra=schema_extra(PROMPT_SCHEMA))

    prompt: str | None = Field(default=None, description="A plain prompt (wrapped as one user message).")
    messages: tuple[ChatMessage, ...] | None = Field(default=None, description="Chat messages.")

    @model_validator(mode="after")
    def _one_prompt(self) -> Prompt:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("send exactly one of prompt or messages")
        if self.messages is not None and not any(m.role == "user" for m in self.messages):
            raise ValueError("messages need at least one user message")
        return self

    def texts(self) -> list[str]:
        """Every text of the request: the prompt, or each message's content."""
        if self.prompt is not None:
            return [self.prompt]
        return [m.content for m in self.messages or ()]

    def user_texts(self) -> list[str]:
        """The parts a person wrote: the prompt, or the user messages (what input checks see)."""
        if self.prompt is not None:
            return [self.prompt]
        return [m.content for m in self.messages or () if m.role == "user"]

    def with_user_texts(self, texts: list[str]) -> Self:
        """The same request with its user texts replaced (e.g. by their redacted forms)."""
        if self.prompt is not None:
            return self.model_copy(update={"prompt": texts[0]})
        it = iter(texts)
        messages = tuple(
            m.model_copy(update={"content": next(it)}) if m.role == "user" else m for m in self.messages or ()
        )
        return self.model_copy(update={"messages": messages})

    def filled(self, placeholder: str, value: str) -> Self:
        """The request with ``placeholder`` replaced by ``value`` in every text."""
        if self.prompt is not None:
            return self.model_copy(update={"prompt": self.prompt.replace(placeholder, value)})
        messages = tuple(
            m.model_copy(update={"content": m.content.replace(placeholder, value)})
            for m in self.messages or ()
        )
        return self.model_copy(update={"messages": messages})


_GROUP_SLOT = {"type": "string", "pattern": "\\{group\\}"}


class GenerationRequest(Prompt):
    """``POST /v1/generations``: a guarded generation job as a client sends it."""

    # A fairness request needs a {group} slot in its prompt or in a message (``_fairness_slot``).
    model_config = ConfigDict(
        json_schema_extra=schema_extra(
            {
                **PROMPT_SCHEMA,
                "if": {"required": ["fairness"], "properties": {"fairness": {"type": "object"}}},
                "then": {
                    "anyOf": [
                        {"required": ["prompt"], "properties": {"prompt": _GROUP_SLOT}},
                        {
                            "required": ["messages"],
                            "properties": {
                                "messages": {
                                    "type": "array",
                                    "contains": {"properties": {"content": _GROUP_SLOT}},
                                }
                            },
                        },
                    ]
                },
            }
        )
    )

    model: str | None = Field(default=None, description="Model id or local folder; default smollm2.")
    policy: str = Field(default="default", description="Policy whose checks guard the job.")
    params: SamplingOverrides = Field(default_factory=SamplingOverrides, description="Sampling parameters.")
    context: tuple[str, ...] | None = Field(
        default=None, description="Grounding documents the output is checked against (hallucination)."
    )
    fairness: FairnessSpec | None = Field(
        default=None, description="Generate the prompt's {group} variants and score gaps between groups."
    )

    @model_validator(mode="after")
    def _fairness_slot(self) -> GenerationRequest:
        if self.fairness is not None and not any(GROUP_PLACEHOLDER in t for t in self.texts()):
            raise ValueError("a fairness request needs a {group} slot in its prompt or messages")
        return self


class GenerationJob(Prompt):
    """A job as the worker runs it: resolved parameters, a known model and policy."""

    job_id: str | None = Field(default=None, description="The stored job's id; none for audit items.")
    model: str = Field(description="Model id or local folder.")
    policy: str = Field(description="Policy name.")
    params: SamplingParams = Field(description="Resolved sampling parameters (policy limits applied).")
    context: tuple[str, ...] | None = Field(default=None, description="Grounding documents.")
    fairness: FairnessSpec | None = Field(default=None, description="Counterfactual fairness request.")
    stream: bool = Field(
        default=False,
        description="Publish the output as it is decoded, each part once the output checks over it passed.",
    )
    enqueued_at: float | None = Field(default=None, description="Unix time the job was queued.")
    audit_run: str | None = Field(default=None, description="The audit run of an audit item; none for jobs.")
