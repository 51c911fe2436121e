"""Shared fixtures: the real API app with the shipped policies and real models."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("ASSAY_MODEL_DIR", str(ROOT / ".cache" / "models"))


@pytest.fixture(scope="session")
def api_client() -> Iterator[object]:
    """A TestClient over the real app (shipped policies, real Presidio and profanity models)."""
    from litestar.testing import TestClient

    from service.app import create_app
    from service.settings import ServiceSettings

    app = create_app(
        ServiceSettings(policy_dir=ROOT / "policies", max_body_bytes=200_000, embedded_worker=False)
    )
    with TestClient(app=app) as client:
        yield client
