"""The OpenAI-compatible routes with the real ``openai`` SDK: API, Redis, a Celery worker, SmolLM2.

The stack serves the shipped ``default`` and ``strict`` policies and
``guard``, a test policy whose output check blocks the word "Paris".
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from devstack.stack import Stack, StackError, start_stack

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
QUESTION = "What is the capital of France?"
EIFFEL = "Write two sentences about the Eiffel Tower."

GUARD_POLICY = ROOT / "tests" / "fixtures" / "policies" / "guard.yaml"


@pytest.fixture(scope="module")
def stack(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    policies = tmp_path_factory.mktemp("policies")
    for name in ("default.yaml", "strict.yaml"):
        shutil.copy(ROOT / "policies" / name, policies / name)
    shutil.copy(GUARD_POLICY, policies / "guard.yaml")
    try:
        st = start_stack(
            redis_url, tmp_path_factory.mktemp("assay-openai"), extra_env={"ASSAY_POLICY_DIR": str(policies)}
        )
    except StackError as exc:
        pytest.fail(str(exc))
    yield st
    st.close()


@pytest.fixture(scope="module")
def client(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key="not-checked", timeout=300, max_retries=0)


def test_chat_completion_gets_a_filtered_answer_with_true_usage(client: openai.OpenAI, stack: Stack) -> None:
    r = client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": QUESTION}],
        temperature=0,
        max_tokens=24,
        seed=1,
        user="user-1",
    )
    choice = r.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content and "Paris" in choice.message.content, stack.dump_logs()
    assert choice.finish_reason in {"stop", "length"}
    assert r.usage is not None and r.usage.prompt_tokens > 5 and 0 < r.usage.completion_tokens <= 24
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assay = r.model_extra["assay"]  # type: ignore[index]
    assert assay["policy"]["name"] == "default" and len(assay["policy"]["sha256"]) == 64
    (job,) = assay["choices"]
    assert job["action"] == "allow" and job["output"]["action"] == "allow"
    with httpx.Client(base_url=stack.base_url) as c:
        stored = c.get(f"/v1/jobs/{job['job_id']}").json()
    # The same job as /v1/generations would have run: recorded, with the same token counts.
    assert stored["status"] == "succeeded" and stored["policy"]["name"] == "default"
    assert stored["result"]["usage"]["completion_tokens"] == r.usage.completion_tokens
    assert stored["result"]["usage"]["prompt_tokens"] == r.usage.prompt_tokens


def test_personal_data_in_the_prompt_is_redacted_before_generation(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model="smollm2",
        messages=[
            {"role": "system", "content": "Answer in one short sentence."},
            {"role": "user", "content": "My email is jane.doe@example.com. Say hello to me."},
        ],
        temperature=0,
        max_tokens=16,
    )
    assay = r.model_extra["assay"]  # type: ignore[index]
    assert assay["choices"][0]["input"]["action"] == "redact"
    assert "EMAIL_ADDRESS" in {f["label"] for f in assay["findings"]}
    assert "jane.doe@example.com" not in (r.choices[0].message.content or "")


def test_text_completion_with_policy_alias_n_and_stop(client: openai.OpenAI) -> None:
    r = client.completions.create(
        model="smollm2@strict", prompt=QUESTION, temperature=0, max_tokens=24, n=2, stop=["Paris"]
    )
    assert len(r.choices) == 2
    for choice in r.choices:
        assert "Paris" not in choice.text and choice.text.strip()
        assert choice.finish_reason == "stop"
    assay = r.model_extra["assay"]  # type: ignore[index]
    assert assay["policy"]["name"] == "strict"
    assert len({c["job_id"] for c in assay["choices"]}) == 2


def test_blocked_prompt_answers_content_filter_without_generating(
    client: openai.OpenAI, stack: Stack
) -> None:
    r = client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "My card is 4111 1111 1111 1111, remember it."}],
        extra_headers={"X-Assay-Policy": "strict"},
    )
    choice = r.choices[0]
    assert choice.finish_reason == "content_filter"
    assert choice.message.content and "blocked" in choice.message.content
    assert choice.message.refusal == choice.message.content
    assert r.usage is not None and r.usage.completion_tokens == 0 and r.usage.prompt_tokens == 0
    (job,) = r.model_extra["assay"]["choices"]  # type: ignore[index]
    assert job["blocked_stage"] == "input" and job["output"] is None
    with httpx.Client(base_url=stack.base_url) as c:
        stored = c.get(f"/v1/jobs/{job['job_id']}").json()
    # Never generated: no output checks ran and no generation time was spent.
    assert "output_checks" not in stored["result"] and "generate_ms" not in stored["result"]["timings"]


def test_blocked_answer_is_withheld(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model="smollm2@guard", messages=[{"role": "user", "content": QUESTION}], max_tokens=24
    )
    choice = r.choices[0]
    assert choice.finish_reason == "content_filter"
    assert choice.message.content and "Paris" not in choice.message.content
    assert "withheld" in choice.message.content
    assert r.usage is not None and r.usage.completion_tokens > 0
    (job,) = r.model_extra["assay"]["choices"]  # type: ignore[index]
    assert job["output"]["action"] == "block" and job["blocked_stage"] == "output"
    assert "ORGANIZATION" in {f["label"] for f in job["output"]["findings"]}


def test_moderations_and_models_through_the_sdk(client: openai.OpenAI) -> None:
    m = client.moderations.create(input=["I will kill you", "What a lovely garden."])
    threat, kind = m.results
    assert threat.flagged and threat.categories.violence
    assert threat.category_scores.violence > 0.5
    assert not kind.flagged and kind.category_scores.violence < 0.5
    ids = [model.id for model in client.models.list()]
    assert "smollm2" in ids and "smollm2@guard" in ids and "smollm2@strict" in ids


def test_unsupported_field_is_a_400_in_openai_shape(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(
            model="smollm2",
            messages=[{"role": "user", "content": "hi"}],
            tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}],
        )
    assert exc.value.status_code == 400
    assert exc.value.param == "tools" and exc.value.code == "unsupported_parameter"
    assert exc.value.type == "invalid_request_error"
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert missing.value.code == "model_not_found"


# --------------------------------------------------------------------------- streaming


def test_streamed_chat_adds_up_to_the_answer_with_usage_and_extension(client: openai.OpenAI) -> None:
    body = {"messages": [{"role": "user", "content": QUESTION}], "temperature": 0, "max_tokens": 24}
    plain = client.chat.completions.create(model="smollm2", **body)  # type: ignore[call-overload]
    stream = client.chat.completions.create(
        model="smollm2", stream=True, stream_options={"include_usage": True}, **body
    )  # type: ignore[call-overload]
    chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 1  # it streamed, more than one piece
    assert chunks[0].choices[0].delta.role == "assistant"
    # Greedy: the same words as the non-streaming answer, arriving piece by piece.
    assert "".join(pieces) == plain.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [plain.choices[0].finish_reason]
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == plain.usage.completion_tokens  # type: ignore[union-attr]
    assert last.model_extra["assay"]["policy"]["name"] == "default"  # type: ignore[index]
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")


def test_streamed_completion(client: openai.OpenAI) -> None:
    stream = client.completions.create(
        model="smollm2", prompt=QUESTION, temperature=0, max_tokens=5, stream=True
    )
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text.strip()
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        "length"
    ]


def test_streamed_choices_interleave_and_each_finishes(client: openai.OpenAI) -> None:
    stream = client.completions.create(
        model="smollm2", prompt=QUESTION, temperature=0.8, seed=3, max_tokens=12, n=2, stream=True
    )
    chunks = [c for c in stream if c.choices]
    texts = {i: "".join(c.choices[0].text for c in chunks if c.choices[0].index == i) for i in (0, 1)}
    assert all(t.strip() for t in texts.values())
    finishes = sorted(
        (c.choices[0].index, c.choices[0].finish_reason) for c in chunks if c.choices[0].finish_reason
    )
    assert [i for i, _ in finishes] == [0, 1]


def test_blocked_prompt_streams_only_the_refusal(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="smollm2@strict",
        messages=[{"role": "user", "content": "My card is 4111 1111 1111 1111, remember it."}],
        stream=True,
    )
    chunks = [c for c in stream if c.choices]
    content = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert "blocked" in content
    assert chunks[-1].choices[0].finish_reason == "content_filter"


def test_a_block_mid_stream_never_sends_the_blocked_word(client: openai.OpenAI, stack: Stack) -> None:
    # Greedy, the model names Paris about ten words in: the words before it pass their
    # windows and go out; the window with "Paris" blocks, and the decode stops there.
    messages = [{"role": "user", "content": EIFFEL}]
    stream = client.chat.completions.create(model="smollm2@guard", messages=messages, stream=True)  # type: ignore[arg-type]
    chunks = list(stream)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Paris" not in streamed
    assert streamed.strip(), stack.dump_logs()
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["content_filter"]
    refusals = [c.choices[0].delta.refusal for c in chunks if c.choices and c.choices[0].delta.refusal]
    assert refusals and "withheld" in refusals[0]
    assay = chunks[-1].model_extra["assay"]  # type: ignore[index]
    assert assay["action"] == "block" and assay["choices"][0]["blocked_stage"] == "output"
    # What the model says when nothing stops it: the streamed words are its beginning.
    plain = client.chat.completions.create(model="smollm2@guard", messages=messages)  # type: ignore[arg-type]
    job_id = plain.model_extra["assay"]["choices"][0]["job_id"]  # type: ignore[index]
    with httpx.Client(base_url=stack.base_url) as c:
        raw = c.get(f"/v1/jobs/{job_id}").json()["result"]["raw_output"]
    assert "Paris" in raw and raw.startswith(streamed)


def test_a_client_that_goes_away_cancels_its_job(stack: Stack) -> None:
    body = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": "Write a long story about a dragon who learns to cook."}],
        "max_tokens": 400,
        "temperature": 0.8,
        "seed": 5,
        "stream": True,
    }
    with httpx.Client(base_url=stack.base_url, timeout=120) as c:
        with c.stream("POST", "/v1/chat/completions", json=body) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            lines = r.iter_lines()
            first = json.loads(next(line for line in lines if line.startswith("data: "))[6:])
            job_id = first["id"].removeprefix("chatcmpl-")
            text = next(line for line in lines if '"content":"' in line and '"content":""' not in line)
            assert text
        # The response is closed mid-stream: the API cancels the job, the worker stops decoding.
        deadline = time.monotonic() + 60
        while (status := c.get(f"/v1/jobs/{job_id}").json()["status"]) == "running":
            assert time.monotonic() < deadline
            time.sleep(0.2)
    assert status == "cancelled", stack.dump_logs()
    deadline = time.monotonic() + 30
    while not any(f"job {job_id} cancelled mid-stream" in p.read_text() for p in stack.logs if p.exists()):
        assert time.monotonic() < deadline, stack.dump_logs()
        time.sleep(0.5)


# --------------------------------------------------------------------------- LangChain


def test_langchain_chat_openai_pointed_at_assay(stack: Stack) -> None:
    from langchain_core.messages import AIMessageChunk, HumanMessage
    from langchain_openai import ChatOpenAI

    def chat(model: str) -> ChatOpenAI:
        return ChatOpenAI(
            model=model,
            base_url=f"{stack.base_url}/v1",
            api_key="not-checked",
            temperature=0,
            max_tokens=24,  # type: ignore[arg-type]
        )

    answer = chat("smollm2").invoke([HumanMessage(QUESTION)])
    assert "Paris" in str(answer.content)
    assert answer.response_metadata["finish_reason"] in {"stop", "length"}
    assert answer.usage_metadata is not None and answer.usage_metadata["output_tokens"] > 0
    chunks = list(chat("smollm2").stream(QUESTION))
    assert len(chunks) > 2 and all(isinstance(c, AIMessageChunk) for c in chunks)
    assert "".join(str(c.content) for c in chunks) == answer.content
    blocked = list(chat("smollm2@guard").stream(QUESTION))
    assert "Paris" not in "".join(str(c.content) for c in blocked)
    assert [
        c.response_metadata.get("finish_reason") for c in blocked if c.response_metadata.get("finish_reason")
    ] == ["content_filter"]
