"""The process's model registry: every loaded model, engine and generator, loaded once.

Checks ask for models by key (engine plus path), the worker for policy engines
and generators; the first caller loads, concurrent callers wait on the same
lock, later callers get the instance. One registry per process, explicit and
resettable: tests call ``registry().clear()`` instead of patching module caches.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class ModelRegistry:
    """Loaded models by key; each loads once, and one load runs at a time.

    Loads of different keys are serialized too: transformers' ``from_pretrained`` (meta-device
    initialisation, weight tying) and the ONNX export are not thread-safe, and two threads
    loading at once (a worker's warm-up thread and its first job) once left SmolLM2's tied
    ``lm_head`` on the meta device ("Cannot copy out of meta tensor"). The lock is reentrant,
    so a loader may load what it needs through the registry.
    """

    def __init__(self) -> None:
        self._models: dict[str, Any] = {}
        self._load_s: dict[str, float] = {}
        self._guard = threading.Lock()
        self._loading = threading.RLock()
        self._fork_hook = False

    def get(self, key: str, loader: Callable[[], T]) -> T:
        """The model under ``key``, calling ``loader`` once if absent."""
        if key in self._models:
            return self._models[key]
        with self._guard:
            if not self._fork_hook and hasattr(os, "register_at_fork"):
                # A lock held by another thread at fork time would stay held in the child.
                os.register_at_fork(after_in_child=self._reset_locks)
                self._fork_hook = True
        with self._loading:  # one load at a time, every key (the class docstring says why)
            if key not in self._models:
                started = time.perf_counter()
                self._models[key] = loader()
                self._load_s[key] = time.perf_counter() - started
            return self._models[key]

    def loaded_keys(self) -> list[str]:
        """Keys of what this process loaded (for readiness and debugging)."""
        return sorted(self._models)

    def load_seconds(self) -> dict[str, float]:
        """How long each loaded model took to load, by key (the metrics' model load time)."""
        return dict(self._load_s)

    def clear(self) -> None:
        """Forget everything loaded: the next ``get`` loads again (tests, policy reloads)."""
        with self._guard:
            self._models.clear()
            self._load_s.clear()

    def _reset_locks(self) -> None:
        self._guard = threading.Lock()
        self._loading = threading.RLock()


_REGISTRY = ModelRegistry()


def registry() -> ModelRegistry:
    """This process's registry."""
    return _REGISTRY


def shared_model(key: str, loader: Callable[[], T]) -> T:
    """The model under ``key`` in this process's registry, loaded once."""
    return _REGISTRY.get(key, loader)
