"""Self-consistency end to end in the worker pipeline: extra samples come from the same batched decode."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import workers.pipeline as pipeline
from evaluators.contracts import GenerationJob, SamplingParams
from evaluators.models import registry
from evaluators.settings import evaluator_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

POLICY = """
name: selfcheck
version: "1"
output:
  - check: hallucination
    mode: self_consistency
    samples: 3
    threshold: 0.5
    action: flag
"""


@pytest.fixture
def selfcheck_policy(tmp_path: Path) -> Iterator[None]:
    (tmp_path / "selfcheck.yaml").write_text(POLICY, encoding="utf-8")
    settings = evaluator_settings().model_copy(update={"policy_dir": tmp_path})
    with evaluator_settings.override(settings):
        yield
    # Engines built on the test's policy folder must not outlive it.
    registry().clear()


def test_answer_is_scored_against_its_own_samples(selfcheck_policy: None) -> None:
    job = GenerationJob(
        policy="selfcheck",
        model="smollm2",
        prompt="What is the capital of France? Answer in one sentence.",
        params=SamplingParams(temperature=0, max_new_tokens=24),
    )
    engine = pipeline.engine_for("selfcheck")
    assert pipeline.self_consistency_samples(engine) == 3
    (result,) = pipeline.guarded_batch([job])
    checks = result.output_checks
    assert checks is not None
    assert checks.errors == (), checks.errors  # samples arrived: the check could evaluate
    assert "hallucination.overall" in checks.scores
    assert checks.engines["hallucination.overall"] == "minilm-similarity"
    assert result.output
