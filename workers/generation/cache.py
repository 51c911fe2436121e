"""The worker's generators: one loaded batching generator per model and options, in the model registry."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from evaluators.models import shared_model
from workers.generation.continuous import ContinuousBatcher
from workers.generation.decode import Generator
from workers.generation.options import GeneratorOptions
from workers.generation.resolve import DEFAULT_MODEL_ID
from workers.generation.scheduler import BatchingGenerator

if TYPE_CHECKING:
    from workers.generation.llama_engine import LlamaCppGenerator


def get_generator(
    model_id: str = DEFAULT_MODEL_ID,
    options: GeneratorOptions | None = None,
    cache_dir: Path | None = None,
) -> BatchingGenerator:
    """The process's batching generator for ``(model_id, options)``, loaded on first use.

    Call it inside the worker process (after fork), not in a parent that forks.
    """
    options = options or GeneratorOptions()
    # Options are a frozen dataclass: its repr names every field, so it keys the cache.
    key = f"generator:{model_id}:{options!r}:{cache_dir}"
    if options.generator_engine == "llama-cpp":
        from workers.generation.llama_engine import LlamaCppGenerator

        return shared_model(key, lambda: front(LlamaCppGenerator(model_id, options, cache_dir).load()))
    return shared_model(key, lambda: front(Generator(model_id, options, cache_dir).load()))


def require_engine(engine: str) -> None:
    """Raise ConfigError (naming the install command) when ``engine`` cannot run in this process."""
    if engine == "llama-cpp":
        from workers.generation.llama_engine import require_llama_cpp

        require_llama_cpp()


def front(generator: Generator | LlamaCppGenerator) -> BatchingGenerator:
    """Continuous batching where rows can join a running batch; else batches gathered per call.

    A compiled decode step runs over a static KV cache of fixed shape, which
    rows cannot join mid-decode; it keeps the gathering front. The llama.cpp
    engine always can.
    """
    if generator.options.continuous_batching and generator.continuous:
        return ContinuousBatcher(generator)
    return BatchingGenerator(generator)
