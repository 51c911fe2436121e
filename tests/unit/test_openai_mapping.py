"""The OpenAI wire mapping: aliases, messages, sampling values, results, moderation categories, errors."""

from __future__ import annotations

from typing import Any

import pytest

from evaluators.contracts import (
    FindingRecord,
    JobResult,
    ModelInfo,
    PolicyIdentity,
    SamplingParams,
    StageResult,
    Usage,
)
from evaluators.engine import Decision
from evaluators.errors import InputError, NotFound
from evaluators.findings import Action, Finding
from service.openai import mapping
from service.openai.schema import ChatRequest, CompletionRequest, InMessage

POLICY = PolicyIdentity(name="strict", version="1.0.0", sha256="ab" * 32)
SERVED = ["smollm2", "llama-8b"]


def result(**fields: Any) -> JobResult:
    base: dict[str, Any] = {
        "policy": POLICY,
        "params": SamplingParams(),
        "action": Action.ALLOW,
        "output": "Paris.",
        "model": ModelInfo(id="smollm2"),
        "usage": Usage(prompt_tokens=30, completion_tokens=4),
        "finish_reason": "stop",
    }
    return JobResult(**{**base, **fields})


# --------------------------------------------------------------------------- requests


def test_model_alias_names_the_policy() -> None:
    assert mapping.split_model("smollm2@strict", None, SERVED) == ("smollm2", "strict")
    assert mapping.split_model("smollm2", "grounded", SERVED) == ("smollm2", "grounded")
    assert mapping.split_model("llama-8b", None, SERVED) == ("llama-8b", None)
    assert mapping.split_model("smollm2@strict", "strict", SERVED) == ("smollm2", "strict")


def test_alias_and_header_must_agree_and_the_model_must_be_served() -> None:
    with pytest.raises(InputError, match="header names 'default'") as exc:
        mapping.split_model("smollm2@strict", "default", SERVED)
    assert exc.value.extra["param"] == "model"
    with pytest.raises(NotFound, match="gpt-4o") as missing:
        mapping.split_model("gpt-4o", None, SERVED)
    assert missing.value.extra["code"] == "model_not_found"
    with pytest.raises(InputError, match="names no policy"):
        mapping.split_model("smollm2@", None, SERVED)


def test_served_models_lead_with_the_default_and_are_unique() -> None:
    assert mapping.served_models("smollm2", ["llama", "smollm2"]) == ["smollm2", "llama"]


def test_chat_messages_map_to_the_prompt_contract() -> None:
    prompt = mapping.chat_prompt(
        [
            InMessage(role="developer", content="Be brief."),
            InMessage.model_validate(
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}],
                }
            ),
            InMessage(role="assistant", content="Hello."),
            InMessage(role="user", content="Capital of France?"),
        ]
    )
    assert prompt.messages is not None
    assert [(m.role, m.content) for m in prompt.messages] == [
        ("system", "Be brief."),
        ("user", "Hi there"),
        ("assistant", "Hello."),
        ("user", "Capital of France?"),
    ]
    assert prompt.user_texts() == ["Hi there", "Capital of France?"]


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ([{"role": "tool", "content": "42", "tool_call_id": "x"}], "messages.0.tool_call_id"),
        ([{"role": "user", "content": "hi"}, {"role": "tool", "content": "42"}], "messages.1.role"),
        ([{"role": "system", "content": "only a system message"}], "messages"),
        ([{"role": "user", "content": None}], "messages.0.content"),
    ],
)
def test_messages_assay_cannot_honour_are_refused_by_name(messages: list[dict[str, Any]], param: str) -> None:
    with pytest.raises(InputError) as exc:
        mapping.chat_prompt([InMessage.model_validate(m) for m in messages])
    assert exc.value.extra["param"] == param


def test_sampling_fields_map_and_unset_ones_stay_unset() -> None:
    request = ChatRequest.model_validate(
        {
            "model": "smollm2",
            "messages": [{"role": "user", "content": "hi"}],
            "temperature": 0,
            "top_p": 1,
            "max_tokens": 12,
            "stop": "\n",
            "seed": 7,
            "user": "user-123",
            "presence_penalty": 0,
            "logprobs": False,
            "tools": [],
        }
    )
    given = mapping.overrides(request).given()
    assert given == {"temperature": 0.0, "top_p": 1.0, "max_new_tokens": 12, "stop": ("\n",), "seed": 7}
    assert isinstance(given["temperature"], float)
    assert (
        mapping.overrides(
            ChatRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "x"}]})
        ).given()
        == {}
    )


def test_max_completion_tokens_is_max_tokens() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    request = ChatRequest.model_validate({**body, "max_completion_tokens": 9})
    assert mapping.overrides(request).max_new_tokens == 9
    with pytest.raises(InputError, match="disagree"):
        mapping.overrides(ChatRequest.model_validate({**body, "max_completion_tokens": 9, "max_tokens": 5}))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("tools", [{"type": "function"}]),
        ("logprobs", True),
        ("presence_penalty", 0.5),
        ("response_format", {"type": "json_object"}),
    ],
)
def test_fields_that_would_change_the_answer_are_refused(field: str, value: Any) -> None:
    request = ChatRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "x"}], field: value}
    )
    with pytest.raises(InputError, match=field) as exc:
        mapping.overrides(request)
    assert exc.value.extra == {"param": field, "code": "unsupported_parameter"}


def test_more_than_four_stops_and_several_prompts_are_refused() -> None:
    with pytest.raises(InputError, match="at most 4"):
        mapping.overrides(
            CompletionRequest.model_validate({"model": "m", "prompt": "x", "stop": list("abcde")})
        )
    with pytest.raises(InputError, match="one prompt"):
        mapping.completion_prompt(["a", "b"])
    assert mapping.completion_prompt(["a"]).prompt == "a"


# --------------------------------------------------------------------------- results


def test_an_allowed_result_is_a_chat_completion_with_true_usage_and_the_extension() -> None:
    finding = FindingRecord(
        check="pii",
        label="EMAIL_ADDRESS",
        score=1.0,
        threshold=0.5,
        triggered=True,
        action=Action.REDACT,
        engine="presidio",
    )
    stage = StageResult(action=Action.REDACT, findings=(finding,), scores={"pii.EMAIL_ADDRESS": 1.0})
    r = result(action=Action.REDACT, output="Mail <EMAIL_ADDRESS>.", input=stage, findings=(finding,))
    body = mapping.chat_completion("smollm2@strict", 1700000000, ["job1"], [r])
    assert body.id == "chatcmpl-job1" and body.model == "smollm2@strict"
    assert body.choices[0].message.content == "Mail <EMAIL_ADDRESS>."
    assert body.choices[0].message.refusal is None
    assert body.choices[0].finish_reason == "stop"
    assert body.usage.model_dump() == {"prompt_tokens": 30, "completion_tokens": 4, "total_tokens": 34}
    assay = body.assay
    assert assay.policy == POLICY and assay.action == "redact"
    assert [f.label for f in assay.findings] == ["EMAIL_ADDRESS"]
    assert assay.choices[0].job_id == "job1" and assay.choices[0].input == stage


def test_blocked_results_are_refusals_with_content_filter() -> None:
    blocked_in = result(
        action=Action.BLOCK, output=None, blocked_stage="input", usage=Usage(), finish_reason=None
    )
    blocked_out = result(action=Action.BLOCK, output=None, blocked_stage="output")
    for r, words in ((blocked_in, "request was blocked"), (blocked_out, "answer was withheld")):
        assert mapping.finish_reason(r) == "content_filter"
        text = mapping.refusal(r)
        assert text is not None and words in text and "'strict'" in text
        assert mapping.content(r) == text
    completion = mapping.completion("smollm2", 1, ["a", "b"], [blocked_in, result(finish_reason="length")])
    assert [c.finish_reason for c in completion.choices] == ["content_filter", "length"]
    assert completion.choices[1].text == "Paris."
    # The prompt counts once; completions add up over choices.
    assert completion.usage.prompt_tokens == 30 and completion.usage.completion_tokens == 4
    assert completion.assay.action == "block"
    assert [c.blocked_stage for c in completion.assay.choices] == ["input", None]


def test_stop_sequence_is_stop() -> None:
    assert mapping.finish_reason(result(finish_reason="stop_sequence")) == "stop"
    assert mapping.finish_reason(result(finish_reason="stop")) == "stop"


# --------------------------------------------------------------------------- moderations


def tox(label: str, score: float, triggered: bool, action: Action = Action.BLOCK) -> Finding:
    return Finding("toxicity", label, score, 0.5, triggered, action, "detoxify:abuse-minilm")


def test_toxicity_labels_map_to_openai_categories() -> None:
    decision = Decision(
        action=Action.BLOCK,
        text=None,
        findings=[tox("threat", 0.9, True), tox("hate", 0.7, True), tox("insult", 0.2, False, Action.FLAG)],
    )
    r = mapping.moderation_result(decision)
    assert r.flagged
    assert r.categories["violence"] and r.categories["harassment/threatening"] and r.categories["hate"]
    assert r.categories["hate/threatening"]  # both hate and threat triggered
    assert not r.categories["harassment"] and not r.categories["self-harm"]
    assert r.category_scores["hate/threatening"] == pytest.approx(0.7)
    assert r.category_scores["violence"] == pytest.approx(0.9)
    assert r.category_scores["harassment"] == pytest.approx(0.2)
    assert set(r.categories) == set(mapping.CATEGORIES) == set(r.category_applied_input_types)
    assert r.assay["action"] == "block"


def test_redacted_personal_data_is_not_flagged_but_a_flag_is() -> None:
    pii = Finding("pii", "PERSON", 0.9, 0.6, True, Action.REDACT, "presidio")
    redacted = mapping.moderation_result(Decision(action=Action.REDACT, text="<PERSON>", findings=[pii]))
    assert not redacted.flagged and not any(redacted.categories.values())
    assert redacted.assay["text"] == "<PERSON>"
    flagged = mapping.moderation_result(
        Decision(action=Action.FLAG, text="x", findings=[tox("insult", 0.8, True, Action.FLAG)])
    )
    assert flagged.flagged and flagged.categories["harassment"]
