"""What the generator is asked (``DecodeRequest``), what it answers, and where it runs.

Sampling parameters are the shared contract, ``evaluators.contracts.SamplingParams``;
a request adds only what the generator alone needs: samples per request,
``ignore_eos`` for benchmarks and raw prompts.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

import torch
from pydantic import ValidationError

from evaluators.contracts import ChatMessage, SamplingParams
from evaluators.errors import ConfigError, InputError

FinishReason = Literal["stop", "stop_sequence", "length", "cancelled"]

Message: TypeAlias = ChatMessage | Mapping[str, str]
"""A chat message: the contract's ``ChatMessage`` or a ``{"role", "content"}`` dict."""


def sampling_params(values: Mapping[str, Any]) -> SamplingParams:
    """``SamplingParams`` from loose values (a job's JSON): a bad value is the caller's InputError."""
    try:
        return SamplingParams.model_validate(dict(values))
    except ValidationError as exc:
        raise InputError(f"invalid generation parameters: {_brief(exc)}", params=dict(values)) from exc


def _brief(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}" for e in exc.errors())


def _message(index: int, message: Message) -> ChatMessage:
    if isinstance(message, ChatMessage):
        return message
    try:
        return ChatMessage.model_validate(dict(message))
    except (ValidationError, TypeError, ValueError) as exc:
        detail = _brief(exc) if isinstance(exc, ValidationError) else str(exc)
        raise InputError(f"message {index} is not a chat message: {detail}") from exc


@dataclass(frozen=True)
class DecodeRequest:
    """One prompt (plain text or chat messages) and how to decode it."""

    prompt: str | None = None
    messages: Sequence[Message] | None = None
    """Chat messages; dicts are checked and turned into ``ChatMessage`` here."""
    params: SamplingParams = field(default_factory=SamplingParams)
    num_return_sequences: int = 1
    """Samples per request (self-consistency); each is one batch row, sample ``i`` seeded ``seed + i``."""
    ignore_eos: bool = False
    """Keep going past EOS up to ``max_new_tokens`` (benchmarks: equal token counts)."""
    raw_prompt: bool = False
    """Feed ``prompt`` as is instead of wrapping it as one user chat message."""
    on_text: Callable[[str], None] | None = field(default=None, compare=False)
    """Called from the decode thread with each new piece of the first sample's text, as it is
    decoded: whole words while decoding (never what a stop sequence may still cut), the rest
    when the row finishes. The pieces add up to ``GenerationOutput.text``. Keep it quick."""
    cancel: threading.Event | None = field(default=None, compare=False)
    """Set it to stop decoding the request's rows; they finish with reason "cancelled"."""

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise InputError("a generation request needs exactly one of prompt or messages")
        if self.messages is not None:
            if not self.messages:
                raise InputError("messages must not be empty")
            # One form from here on (a tuple also keeps the request immutable).
            messages = tuple(_message(i, m) for i, m in enumerate(self.messages))
            object.__setattr__(self, "messages", messages)
        if not isinstance(self.params, SamplingParams):
            raise TypeError(f"params must be SamplingParams, not {type(self.params).__name__}")
        if self.num_return_sequences < 1:
            raise InputError("num_return_sequences must be >= 1")

    def chat(self) -> list[dict[str, str]] | None:
        """The messages as a chat template takes them; None for a plain prompt."""
        if self.messages is None:
            return None
        return [_message(i, m).model_dump() for i, m in enumerate(self.messages)]


@dataclass(frozen=True)
class GenerationOutput:
    """The result of one request."""

    text: str
    """The first sample, cut before its stop sequence."""
    samples: list[str]
    """All ``num_return_sequences`` texts; ``samples[0] == text``."""
    finish_reason: FinishReason
    """Of the first sample: EOS ("stop"), a stop string ("stop_sequence"), "length" or "cancelled"."""
    prompt_tokens: int
    completion_tokens: int
    """Tokens generated over all samples (what was computed; EOS counts)."""
    generate_ms: float
    """Wall time of the batched decode(s) that served this request."""
    queue_ms: float = 0.0
    """Time between ``BatchingGenerator.submit`` and the start of its batch."""
    batch_rows: int = 1
    """Rows that shared the forward passes with this request (itself included)."""
    sample_finish_reasons: list[FinishReason] = field(default_factory=list)


DTYPES: dict[str, torch.dtype | None] = {
    "auto": None,
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}


GeneratorEngine: TypeAlias = Literal["transformers", "llama-cpp"]
LlamaWeights: TypeAlias = Literal["f16", "q8_0", "source"]
ENGINES: tuple[GeneratorEngine, ...] = ("transformers", "llama-cpp")


@dataclass(frozen=True)
class GeneratorOptions:
    """Where and how the model runs. Mirrors the generation fields of ``WorkerSettings``."""

    generator_engine: GeneratorEngine = "transformers"
    """transformers (torch, batched decoding; the options below) or llama-cpp (the GGUF on
    llama-cpp-python, rows batched per decode step; ``llama_threads``, ``llama_context``,
    ``max_batch_size`` and ``continuous_batching`` apply)."""
    llama_threads: int = 0
    """Threads of the llama-cpp engine; 0: every core."""
    llama_weights: LlamaWeights = "f16"
    """Weights the llama-cpp engine decodes with: the GGUF converted once to f16 (every Q4_1
    weight as it dequantizes: greedy text as the fp32 transformers engine's, whatever the batch)
    or q8_0, or the GGUF as it is (source: 4-bit kernels, whose text can change with the batch)."""
    llama_context: int = 0
    """KV cache cells of the llama-cpp engine, shared by the rows decoding at once (each may use
    all of them); 0: the model's training context (8192 for SmolLM2, ~190 MB of cache)."""
    device: str = "auto"
    """auto (cuda if available, else cpu), cpu, cuda, cuda:N."""
    dtype: str = "auto"
    """auto (bf16 on CUDA if supported else fp16; fp32 on CPU), fp32, bf16, fp16 (CUDA only)."""
    attn_implementation: str = "sdpa"
    """sdpa or eager."""
    quantize_int8: bool = False
    """Dynamic int8 quantization of every nn.Linear (CPU, fp32 only).

    Off by default: it decodes about 4x faster on 2 cores but fails the gate in
    tests/integration/test_generator_model.py (greedy outputs identical to fp32 on
    at least 12 of 16 fixed prompts); SmolLM2-135M, already 4-bit in its GGUF,
    matched on 1 of 16."""
    compile: bool = False
    """torch.compile the decode step over a static KV cache (see ``Generator._decode``).

    Works on CPU but does not pay there (torch 2.13, 2 cores): ~60 s to compile per
    new shape and slower decoding than eager. Meant for CUDA; skipped with int8."""
    max_batch_size: int = 16
    """Most rows in one batched forward pass; bigger calls run in chunks."""
    continuous_batching: bool = True
    """Requests join the running decode at the next step (``ContinuousBatcher``); off: the
    worker gathers requests for ``batch_wait_ms`` and decodes each batch to its end."""
    batch_wait_ms: float = 5.0
    """How long BatchingGenerator waits for more requests after the first."""
    prune_finished: bool = True
    """Drop finished rows from the batch and the KV cache (ignored with compile)."""

    def __post_init__(self) -> None:
        if self.generator_engine not in ENGINES:
            raise ConfigError(
                f"generator_engine must be one of {', '.join(ENGINES)}, not {self.generator_engine!r}"
            )
        if self.llama_threads < 0:
            raise ConfigError("llama_threads must be >= 0")
        if self.llama_weights not in ("f16", "q8_0", "source"):
            raise ConfigError(f"llama_weights must be f16, q8_0 or source, not {self.llama_weights!r}")
        if self.llama_context < 0:
            raise ConfigError("llama_context must be >= 0")
        if self.attn_implementation not in {"sdpa", "eager"}:
            raise ConfigError(f"attn_implementation must be sdpa or eager, not {self.attn_implementation!r}")
        if self.dtype.lower() not in DTYPES:
            raise ConfigError(f"dtype must be auto, fp32, bf16 or fp16, not {self.dtype!r}")
        if self.max_batch_size < 1:
            raise ConfigError("max_batch_size must be >= 1")
        if self.batch_wait_ms < 0:
            raise ConfigError("batch_wait_ms must be >= 0")

    @classmethod
    def from_settings(cls, settings: Any) -> GeneratorOptions:
        """Build from any object with the same field names (e.g. ``WorkerSettings``)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{n: getattr(settings, n) for n in names if hasattr(settings, n)})
