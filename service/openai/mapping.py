"""Pure mappings between the OpenAI wire format and Assay's contracts (no I/O, unit-tested)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from evaluators.contracts import ChatMessage, JobResult, PolicyIdentity, Prompt, SamplingOverrides
from evaluators.engine import Decision
from evaluators.errors import InputError, NotFound
from evaluators.findings import Action
from service.openai.schema import (
    AssayExtension,
    ChatChoice,
    ChatCompletion,
    ChatRequest,
    ChoiceAssay,
    Completion,
    CompletionRequest,
    InMessage,
    ModerationResult,
    OutMessage,
    TextChoice,
    UsageOut,
    unsupported,
)

POLICY_HEADER = "x-assay-policy"
ALIAS_SEP = "@"


def split_model(model: str, header_policy: str | None, served: Sequence[str]) -> tuple[str, str | None]:
    """``smollm2@strict`` -> ``("smollm2", "strict")``; the policy may also come from the header.

    A model that is not served is a 404 (``model_not_found``); an alias and a
    header naming different policies are a 400.
    """
    name, sep, alias = model.partition(ALIAS_SEP)
    if sep and not alias:
        raise InputError(f"model {model!r} ends with {ALIAS_SEP!r} but names no policy", param="model")
    if name not in served:
        raise NotFound(
            f"model {name!r} is not served here; GET /v1/models lists {', '.join(served)}",
            param="model",
            code="model_not_found",
        )
    header_policy = (header_policy or "").strip() or None
    if alias and header_policy and alias != header_policy:
        raise InputError(
            f"model alias names policy {alias!r} but the X-Assay-Policy header names {header_policy!r}",
            param="model",
        )
    return name, alias or header_policy


def served_models(default_model: str, routed: Sequence[str]) -> list[str]:
    """The models this deployment serves: the default, then those routed to a queue."""
    return list(dict.fromkeys([default_model, *routed]))


def _content(index: int, message: InMessage) -> str:
    if isinstance(message.content, list):
        return "".join(part.text for part in message.content)
    if message.content is None:
        raise InputError(f"messages[{index}] has no content", param=f"messages.{index}.content")
    return message.content


def chat_prompt(messages: Sequence[InMessage]) -> Prompt:
    """OpenAI chat messages as Assay's ``Prompt`` (``developer`` is a system message)."""
    out: list[ChatMessage] = []
    for i, m in enumerate(messages):
        unsupported(m.model_extra, where=f"messages.{i}.")
        if m.role in ("tool", "function"):
            raise InputError(
                f"messages[{i}] has role {m.role!r}: tools are not supported by Assay's endpoint",
                param=f"messages.{i}.role",
                code="unsupported_parameter",
            )
        role: Literal["system", "user", "assistant"] = (
            "system" if m.role in ("system", "developer") else "user" if m.role == "user" else "assistant"
        )
        out.append(ChatMessage(role=role, content=_content(i, m)))
    if not any(m.role == "user" for m in out):
        raise InputError("messages need at least one user message", param="messages")
    return Prompt(messages=tuple(out))


def completion_prompt(prompt: str | Sequence[str]) -> Prompt:
    if isinstance(prompt, str):
        return Prompt(prompt=prompt)
    if len(prompt) != 1:
        raise InputError("send one prompt per request", param="prompt")
    return Prompt(prompt=prompt[0])


def overrides(request: ChatRequest | CompletionRequest) -> SamplingOverrides:
    """The request's sampling values; what it leaves out comes from the policy."""
    unsupported(request.model_extra)
    max_tokens = request.max_tokens
    if isinstance(request, ChatRequest) and request.max_completion_tokens is not None:
        if max_tokens is not None and max_tokens != request.max_completion_tokens:
            raise InputError("max_tokens and max_completion_tokens disagree", param="max_completion_tokens")
        max_tokens = request.max_completion_tokens
    return SamplingOverrides(
        temperature=None if request.temperature is None else float(request.temperature),
        top_p=None if request.top_p is None else float(request.top_p),
        max_new_tokens=max_tokens,
        stop=request.stops(),
        seed=request.seed,
    )


def refusal(result: JobResult) -> str | None:
    """The refusal text of a blocked job, None when it was not blocked."""
    if result.action is not Action.BLOCK:
        return None
    name = result.policy.name
    if result.blocked_stage == "input":
        return f"I can't help with that: the request was blocked by the {name!r} policy."
    return f"The answer was withheld: it did not pass the {name!r} policy's output checks."


def finish_reason(result: JobResult) -> str:
    """OpenAI's finish reason: a block is ``content_filter``; a stop sequence is ``stop``."""
    if result.action is Action.BLOCK:
        return "content_filter"
    if result.finish_reason == "length":
        return "length"
    return "stop"


def content(result: JobResult) -> str:
    """What the client reads: the filtered output, or the refusal when blocked."""
    return refusal(result) or result.output or ""


def usage(results: Sequence[JobResult]) -> UsageOut:
    """True token counts: the prompt once (as OpenAI counts it), completions summed over choices."""
    prompt = max((r.usage.prompt_tokens for r in results), default=0)
    completion = sum(r.usage.completion_tokens for r in results)
    return UsageOut(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def extension(job_ids: Sequence[str], results: Sequence[JobResult]) -> AssayExtension:
    return AssayExtension(
        policy=PolicyIdentity.model_validate(results[0].policy.model_dump()),
        action=Action.strongest([r.action for r in results]).value,
        findings=[f for r in results for f in r.findings],
        choices=[
            ChoiceAssay(
                index=i,
                job_id=job_id,
                action=r.action.value,
                blocked_stage=r.blocked_stage,
                input=r.input,
                output=r.output_checks,
            )
            for i, (job_id, r) in enumerate(zip(job_ids, results, strict=True))
        ],
    )


def chat_completion(
    model: str, created: int, job_ids: Sequence[str], results: Sequence[JobResult]
) -> ChatCompletion:
    return ChatCompletion(
        id=f"chatcmpl-{job_ids[0]}",
        created=created,
        model=model,
        choices=[
            ChatChoice(
                index=i,
                message=OutMessage(content=content(r), refusal=refusal(r)),
                finish_reason=finish_reason(r),
            )
            for i, r in enumerate(results)
        ],
        usage=usage(results),
        system_fingerprint=f"assay-{results[0].policy.sha256[:12]}",
        assay=extension(job_ids, results),
    )


def completion(model: str, created: int, job_ids: Sequence[str], results: Sequence[JobResult]) -> Completion:
    return Completion(
        id=f"cmpl-{job_ids[0]}",
        created=created,
        model=model,
        choices=[
            TextChoice(index=i, text=content(r), finish_reason=finish_reason(r))
            for i, r in enumerate(results)
        ],
        usage=usage(results),
        system_fingerprint=f"assay-{results[0].policy.sha256[:12]}",
        assay=extension(job_ids, results),
    )


# --------------------------------------------------------------------------- moderations

CATEGORIES = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)
"""OpenAI's moderation categories; those Assay has no label for score 0 and never flag."""

LABELS: dict[str, tuple[str, ...]] = {
    "harassment": ("insult",),
    "harassment/threatening": ("threat",),
    "hate": ("hate",),
    "sexual": ("sexual",),
    "violence": ("threat",),
}
"""Category -> the toxicity labels behind it (the highest score counts, any trigger flags)."""

BOTH: dict[str, tuple[str, ...]] = {"hate/threatening": ("hate", "threat")}
"""Categories that need every label: the lowest score counts, all must trigger."""


def moderation_result(decision: Decision) -> ModerationResult:
    """OpenAI's categories from Assay's toxicity labels; ``flagged`` also when the policy flags or blocks.

    A text the policy only redacts (personal data) is not flagged: its
    redacted form is in ``assay.text``.
    """
    scores = decision.scores()
    triggered = {f.label for f in decision.triggered if f.check == "toxicity"}

    def score(label: str) -> float:
        return float(scores.get(f"toxicity.{label}", 0.0))

    category_scores = {c: 0.0 for c in CATEGORIES}
    categories = {c: False for c in CATEGORIES}
    for category, labels in LABELS.items():
        category_scores[category] = max(score(label) for label in labels)
        categories[category] = any(label in triggered for label in labels)
    for category, labels in BOTH.items():
        category_scores[category] = min(score(label) for label in labels)
        categories[category] = all(label in triggered for label in labels)
    flagged = any(categories.values()) or decision.action in (Action.FLAG, Action.BLOCK)
    return ModerationResult(
        flagged=flagged,
        categories=categories,
        category_scores=category_scores,
        category_applied_input_types={c: ["text"] for c in CATEGORIES},
        assay=decision.to_dict(),
    )
