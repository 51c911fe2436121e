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
def api_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A TestClient over the real app (shipped policies, real Presidio and profanity models)."""
    from litestar.testing import TestClient

    from evaluators.settings import evaluator_settings
    from service.app import create_app
    from service.settings import ServiceSettings
    from workers.settings import worker_settings

    app = create_app(ServiceSettings(max_body_bytes=200_000, embedded_worker=False))
    client = TestClient(app=app)
    # Policies load at startup: the shipped ones, whatever ASSAY_POLICY_DIR says in this shell.
    shipped = evaluator_settings().model_copy(update={"policy_dir": ROOT / "policies"})
    # The store (drift events, jobs) in a folder of the session's own, not the checkout's var/.
    data = tmp_path_factory.mktemp("api-data")
    store = worker_settings().model_copy(update={"data_dir": data, "database_url": ""})
    with evaluator_settings.override(shipped), worker_settings.override(store):
        client.__enter__()
    try:
        yield client
    finally:
        client.__exit__(None, None, None)
