"""The OpenAI wire format as Assay serves it: requests, responses, errors.

Requests accept the fields Assay can honour (``model``, ``messages``/``prompt``,
``temperature``, ``top_p``, ``max_tokens``, ``stop``, ``seed``, ``n``,
``stream``, ``user``); any other field with a value that changes the answer
(``tools``, ``logprobs: true``, ``presence_penalty: 0.5``...) is refused with a
400 naming it, rather than silently ignored. Responses carry the standard
fields plus ``assay``, the extension with findings, scores and the policy.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from evaluators.contracts import FindingRecord, PolicyIdentity, StageResult
from evaluators.contracts.schema import json_integer, schema_extra
from evaluators.errors import InputError

MAX_CHOICES = 8
"""Most choices (``n``) one request may ask for: each is a job of its own."""

# Fields OpenAI defines that Assay does not implement, with the values that are
# the same as leaving them out (clients such as LangChain send some of them).
NEUTRAL: dict[str, tuple[Any, ...]] = {
    "presence_penalty": (0, 0.0),
    "frequency_penalty": (0, 0.0),
    "logprobs": (False,),
    "echo": (False,),
    "best_of": (1,),
    "logit_bias": ({},),
    "parallel_tool_calls": (True, False),
    "store": (False,),
    "metadata": ({},),
    "suffix": ("",),
}


# What ``unsupported`` lets through, as JSON Schema: known fields at a neutral value, and
# for any other field null or [] only.
def _json_enum(values: tuple[Any, ...]) -> list[Any]:
    """``values`` plus null and [], and what Python's ``in`` also matches: false for 0, 1 for true."""
    out: dict[str, Any] = {}
    for value in (*values, None, []):
        same = [value]
        if isinstance(value, int | float) and value in (0, 1):
            same += [int(value), bool(value)]
        for v in same:
            # JSON equality: 0 and 0.0 are one number, false is not a number.
            key = f"n{float(v)}" if isinstance(v, int | float) and not isinstance(v, bool) else repr(v)
            out.setdefault(key, v)
    return list(out.values())


NEUTRAL_SCHEMA: dict[str, Any] = {
    "properties": {name: {"enum": _json_enum(values)} for name, values in NEUTRAL.items()},
    "additionalProperties": {"enum": [None, []]},
}
_STOP = {"type": "string", "minLength": 1}
# The request rules beyond the fields: stop sequences up to 4 and none empty (``stops``, the
# sampling parameters), stream_options only when streaming, no model ending in a bare "@".
REQUEST_SCHEMA: dict[str, Any] = {
    "properties": {
        "stop": {"oneOf": [_STOP, {"type": "array", "items": _STOP, "maxItems": 4}, {"type": "null"}]},
        "model": {"not": {"pattern": "^[^@]*@$"}},
    },
    "if": {"required": ["stream_options"], "properties": {"stream_options": {"type": "object"}}},
    "then": {"required": ["stream"], "properties": {"stream": {"const": True}}},
}


def unsupported(extra: dict[str, Any] | None, where: str = "") -> None:
    """Raise a 400 naming the first field Assay would have to ignore (``where`` prefixes its path)."""
    for name, value in (extra or {}).items():
        if value is None or value in NEUTRAL.get(name, ()) or value == []:
            continue
        raise InputError(
            f"{where + name!r} is not supported by Assay's OpenAI-compatible endpoint",
            param=where + name,
            code="unsupported_parameter",
        )


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = Field(default=False, strict=True, description="Send a last chunk with the usage.")


class _Request(BaseModel):
    # Unknown fields are collected (not refused by the parser) so the 400 can name them.
    model_config = ConfigDict(extra="allow", json_schema_extra=schema_extra(NEUTRAL_SCHEMA, REQUEST_SCHEMA))

    model: str = Field(description="A served model, optionally with a policy: 'smollm2' or 'smollm2@strict'.")
    # Numbers as the schema says: true or "0.5" is refused, not coerced (json_integer for integers).
    temperature: float | None = Field(
        default=None, ge=0.0, le=2.0, strict=True, description="Sampling temperature."
    )
    top_p: float | None = Field(
        default=None, ge=0.0, le=1.0, strict=True, description="Nucleus sampling mass."
    )
    max_tokens: int | None = Field(default=None, ge=1, description="Most tokens to generate.")
    stop: str | list[str] | None = Field(default=None, description="Up to 4 stop sequences.")
    seed: int | None = Field(
        default=None, description="Seed for reproducible sampling; choice i uses seed + i."
    )
    n: int | None = Field(default=None, ge=1, le=MAX_CHOICES, description="Choices to generate.")
    stream: bool | None = Field(default=None, strict=True, description="Answer with Server-Sent Events.")
    stream_options: StreamOptions | None = Field(default=None, description="include_usage: a usage chunk.")
    user: str | None = Field(default=None, description="End-user id; accepted, never stored.")

    _integers = field_validator("max_tokens", "seed", "n", mode="before")(json_integer)

    def stops(self) -> tuple[str, ...] | None:
        if self.stop is None:
            return None
        stops = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        if len(stops) > 4:
            raise InputError("stop takes at most 4 sequences", param="stop")
        return stops

    def choices(self) -> int:
        return self.n or 1


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]
    text: str


class InMessage(BaseModel):
    """A chat message as OpenAI clients send it."""

    # Tool and function messages are refused, and content is required (``mapping.chat_prompt``).
    model_config = ConfigDict(
        extra="allow",
        json_schema_extra=schema_extra(
            NEUTRAL_SCHEMA,
            {
                "required": ["role", "content"],
                "properties": {
                    "role": {"enum": ["system", "developer", "user", "assistant"]},
                    "content": {"not": {"type": "null"}},
                },
            },
        ),
    )

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextPart] | None = None
    name: str | None = None


class ChatRequest(_Request):
    """``POST /v1/chat/completions``."""

    # At least one user message (``mapping.chat_prompt``).
    model_config = ConfigDict(
        json_schema_extra=schema_extra(
            NEUTRAL_SCHEMA,
            REQUEST_SCHEMA,
            {"properties": {"messages": {"contains": {"properties": {"role": {"const": "user"}}}}}},
        )
    )

    messages: list[InMessage] = Field(min_length=1, description="The conversation so far.")
    max_completion_tokens: int | None = Field(default=None, ge=1, description="Same as max_tokens.")

    _more_integers = field_validator("max_completion_tokens", mode="before")(json_integer)


class CompletionRequest(_Request):
    """``POST /v1/completions``."""

    # One prompt per request (``mapping.completion_prompt``).
    model_config = ConfigDict(
        json_schema_extra=schema_extra(
            NEUTRAL_SCHEMA,
            REQUEST_SCHEMA,
            {
                "properties": {
                    "prompt": {
                        "oneOf": [
                            {"type": "string"},
                            {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 1},
                        ]
                    }
                }
            },
        )
    )

    prompt: str | list[str] = Field(description="The prompt (a list of one string is accepted).")


class ModerationRequest(BaseModel):
    """``POST /v1/moderations``."""

    # At least one text (the route refuses an empty list).
    model_config = ConfigDict(
        extra="allow",
        json_schema_extra=schema_extra(
            NEUTRAL_SCHEMA,
            {
                "properties": {
                    "input": {
                        "oneOf": [
                            {"type": "string"},
                            {"type": "array", "items": {"type": "string"}, "minItems": 1},
                        ]
                    }
                }
            },
        ),
    )

    input: str | list[str] = Field(description="A text or texts to classify.")
    model: str | None = Field(default=None, description="Ignored but for an '@policy' suffix.")


# --------------------------------------------------------------------------- responses


class UsageOut(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChoiceAssay(BaseModel):
    """What Assay decided about one choice."""

    index: int
    job_id: str
    action: str
    blocked_stage: Literal["input", "output"] | None = None
    input: StageResult | None = None
    output: StageResult | None = None


class AssayExtension(BaseModel):
    """The ``assay`` field: findings, scores and the policy that decided."""

    policy: PolicyIdentity
    action: str = Field(description="The strongest action over the choices.")
    findings: list[FindingRecord] = Field(description="Triggered findings, both stages, all choices.")
    choices: list[ChoiceAssay]


class OutMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None


class ChatChoice(BaseModel):
    index: int
    message: OutMessage
    finish_reason: str
    logprobs: None = None


class _Answer(BaseModel):
    """What both completion responses carry besides their choices."""

    id: str
    created: int
    model: str
    usage: UsageOut
    system_fingerprint: str | None = None
    assay: AssayExtension


class ChatCompletion(_Answer):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatChoice]


class TextChoice(BaseModel):
    index: int
    text: str
    finish_reason: str
    logprobs: None = None


class Completion(_Answer):
    object: Literal["text_completion"] = "text_completion"
    choices: list[TextChoice]


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "assay"
    policies: list[str] = Field(description="Policies this model can be asked for ('MODEL@POLICY').")
    policy: str | None = Field(default=None, description="The policy this id stands for, if it names one.")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ModerationResult(BaseModel):
    flagged: bool
    categories: dict[str, bool]
    category_scores: dict[str, float]
    category_applied_input_types: dict[str, list[str]]
    assay: dict[str, Any] = Field(description="Assay's decision: action, findings, scores, engines.")


class ModerationResponse(BaseModel):
    id: str
    model: str
    results: list[ModerationResult]
    assay: dict[str, Any] = Field(description="The policy and stage that decided.")


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """OpenAI's error shape, on these routes only (problem details everywhere else)."""

    error: ErrorBody
