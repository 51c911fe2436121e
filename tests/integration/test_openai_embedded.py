"""``make run``'s set-up with the openai SDK: no Redis, the API's own Celery worker child on the
filesystem broker, streams through files under the data folder."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from devstack.stack import Stack, StackError, start_stack

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Path]]:
    policies = tmp_path_factory.mktemp("policies")
    shutil.copy(ROOT / "policies" / "default.yaml", policies / "default.yaml")
    data = tmp_path_factory.mktemp("assay-embedded")
    try:
        # No broker URL and no worker processes of its own: the API starts the embedded worker.
        st = start_stack("", data, workers=0, extra_env={"ASSAY_POLICY_DIR": str(policies)})
    except StackError as exc:
        pytest.fail(str(exc))
    yield st, data
    st.close()


def test_chat_with_and_without_streaming_against_the_embedded_service(embedded: tuple[Stack, Path]) -> None:
    stack, data = embedded
    client = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key="unused", timeout=300, max_retries=0)
    body = {"messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 24}
    plain = client.chat.completions.create(model="smollm2", temperature=0, **body)  # type: ignore[call-overload]
    answer = plain.choices[0].message.content
    assert answer and "Paris" in answer, stack.dump_logs()
    chunks = list(client.chat.completions.create(model="smollm2", temperature=0, stream=True, **body))  # type: ignore[call-overload]
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 1 and "".join(pieces) == answer
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        plain.choices[0].finish_reason
    ]
    # The stream went through a file that the API removed once it was read.
    assert (data / "broker").is_dir()
    assert (data / "streams").is_dir() and not list((data / "streams").iterdir())
