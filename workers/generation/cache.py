"""The per-process generator cache: one loaded batching generator per model and options."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from workers.generation.decode import Generator
from workers.generation.options import GeneratorOptions
from workers.generation.resolve import DEFAULT_MODEL_ID
from workers.generation.scheduler import BatchingGenerator

_generators: dict[tuple[str, GeneratorOptions, Path | None], BatchingGenerator] = {}
_generators_lock = threading.Lock()


def get_generator(
    model_id: str = DEFAULT_MODEL_ID,
    options: GeneratorOptions | None = None,
    cache_dir: Path | None = None,
) -> BatchingGenerator:
    """The process-wide batching generator for ``(model_id, options)``, loaded on first use.

    Call it inside the worker process (after fork), not in a parent that forks.
    """
    options = options or GeneratorOptions()
    key = (model_id, options, cache_dir)
    with _generators_lock:
        front = _generators.get(key)
        if front is None:
            generator = Generator(model_id, options, cache_dir).load()
            front = _generators[key] = BatchingGenerator(generator)
        return front


def _reset_after_fork() -> None:
    # A lock held by another thread at fork time would stay held forever in the
    # child (the generators' own locks are reset in ``decode``).
    global _generators_lock
    _generators_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)
