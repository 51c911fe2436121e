"""Text generation on transformers/torch for the worker tasks.

Each part usable on its own, each in its own module:

* ``resolve``: :func:`resolve_model` finds a model on this machine (never
  downloads); the default SmolLM2 GGUF is converted once into a safetensors folder.
* ``options``: :class:`DecodeRequest` (a prompt or chat messages with the shared
  ``evaluators.contracts.SamplingParams``), :class:`GenerationOutput`,
  :class:`GeneratorOptions`.
* ``loading``: device, dtype, int8 and torch.compile for the loaded model.
* ``sampling``: per-row decoding state and the per-row sampler.
* ``decode``: :class:`Generator`, one batched decode loop in which every row
  keeps its own sampling parameters, so unrelated requests share each forward pass.
* ``running``: :class:`RunningBatch`, a decode batch that rows join and leave between steps.
* ``scheduler``: :class:`BatchingGenerator` gathers requests from many threads
  (the Celery threads pool) for a few milliseconds and serves them with one ``generate``.
* ``continuous``: :class:`ContinuousBatcher`, the same front over per-step
  scheduling: a request joins the running batch at the next step (the default).
* ``cache``: :func:`get_generator`, one loaded generator per process and key.
* ``llama_engine``: the optional llama.cpp engine (``ASSAY_GENERATOR_ENGINE=llama-cpp``) behind
  the same front: the GGUF (converted once to f16) on llama-cpp-python.
* ``llama_batch``: :class:`LlamaRunningBatch`, its rows as llama.cpp sequences, one
  ``llama_decode`` per step for all of them.
"""

from workers.generation.cache import get_generator, require_engine
from workers.generation.continuous import ContinuousBatcher
from workers.generation.decode import Generator
from workers.generation.options import (
    DecodeRequest,
    FinishReason,
    GenerationOutput,
    GeneratorOptions,
    Message,
    sampling_params,
)
from workers.generation.resolve import (
    CONVERSION_MARKER,
    DEFAULT_MODEL_ID,
    ResolvedModel,
    resolve_model,
    smollm2_gguf_path,
)
from workers.generation.scheduler import BatchingGenerator

__all__ = [
    "CONVERSION_MARKER",
    "DEFAULT_MODEL_ID",
    "BatchingGenerator",
    "ContinuousBatcher",
    "DecodeRequest",
    "FinishReason",
    "GenerationOutput",
    "Generator",
    "GeneratorOptions",
    "Message",
    "ResolvedModel",
    "get_generator",
    "require_engine",
    "resolve_model",
    "sampling_params",
    "smollm2_gguf_path",
]
