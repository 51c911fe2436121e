"""Process-wide cache of loaded models: each model loads once per process.

Checks ask for models by key (engine plus path); the first caller loads,
concurrent callers wait on the same lock, later callers get the instance.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_models: dict[str, Any] = {}
_locks: dict[str, threading.Lock] = {}
_guard = threading.Lock()


def shared_model(key: str, loader: Callable[[], T]) -> T:
    """Return the model cached under ``key``, calling ``loader`` once if absent."""
    if key in _models:
        return _models[key]
    with _guard:
        lock = _locks.setdefault(key, threading.Lock())
    with lock:
        if key not in _models:
            _models[key] = loader()
        return _models[key]


def loaded_keys() -> list[str]:
    """Keys of the models loaded in this process (for readiness and debugging)."""
    return sorted(_models)


def clear() -> None:
    """Forget every cached model (tests only)."""
    with _guard:
        _models.clear()
        _locks.clear()
