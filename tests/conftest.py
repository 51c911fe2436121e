"""Shared fixtures: the real API app with the shipped policies and real models."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from evaluators.runtime import configure_process

ROOT = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    # Before any test module is collected (and imports torch or transformers):
    # offline, as in production; models from the checkout unless told otherwise.
    configure_process()
    os.environ.setdefault("ASSAY_MODEL_DIR", str(ROOT / ".cache" / "models"))


@pytest.fixture(scope="session")
def api_client() -> Iterator[object]:
    """A TestClient over the real app (shipped policies, real Presidio and profanity models)."""
    from litestar.testing import TestClient

    from evaluators.settings import evaluator_settings
    from service.app import create_app
    from service.settings import ServiceSettings

    app = create_app(ServiceSettings(max_body_bytes=200_000, embedded_worker=False))
    client = TestClient(app=app)
    # Policies load at startup: the shipped ones, whatever ASSAY_POLICY_DIR says in this shell.
    shipped = evaluator_settings().model_copy(update={"policy_dir": ROOT / "policies"})
    with evaluator_settings.override(shipped):
        client.__enter__()
    try:
        yield client
    finally:
        client.__exit__(None, None, None)
