"""Loading the generator's model: device, dtype, int8 quantization and torch.compile.

CUDA is touched only inside :func:`load_model`, never at import, so forked
worker processes stay safe (a CUDA context does not survive ``fork``).
"""

from __future__ import annotations

import inspect
import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from evaluators.errors import ConfigError
from workers.generation.options import DTYPES, GeneratorOptions
from workers.generation.resolve import ResolvedModel, resolve_model

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)


@dataclass
class Loaded:
    """A loaded model with what the decode loop needs to know about it."""

    resolved: ResolvedModel
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    device: torch.device
    dtype: torch.dtype
    eos_ids: frozenset[int]
    pad_id: int
    max_context: int
    cache_kwarg: str
    optimizations: dict[str, Any]
    decode_step: Callable[..., torch.Tensor] | None = None
    """Compiled decode step (compile option) or None for eager."""


def load_model(model_id: str, options: GeneratorOptions, cache_dir: Path) -> Loaded:
    """Resolve ``model_id``, load it on the options' device and dtype, and optimize it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evaluators.settings import resolve_device

    started = time.perf_counter()
    resolved = resolve_model(model_id, cache_dir)
    device = torch.device(resolve_device(options.device))  # first CUDA touch
    dtype = pick_dtype(options.dtype, device)
    if options.quantize_int8 and device.type == "cpu" and dtype != torch.float32:
        raise ConfigError("quantize_int8 needs dtype fp32 (dynamic int8 runs fp32 activations)")
    tokenizer = AutoTokenizer.from_pretrained(resolved.path, local_files_only=True)
    model: Any = AutoModelForCausalLM.from_pretrained(
        resolved.path,
        dtype=dtype,
        attn_implementation=options.attn_implementation,
        local_files_only=True,
    )
    model = model.to(device).eval()
    optimizations: dict[str, Any] = {}
    if options.quantize_int8:
        if device.type != "cpu":
            optimizations["quantize_int8"] = "skipped: dynamic int8 is CPU only"
            log.warning("quantize_int8 ignored on %s", device)
        else:
            model = _quantize_int8(model)
            optimizations["quantize_int8"] = "torch.ao dynamic qint8 on nn.Linear, per channel"
    loaded = prepare(resolved, model, tokenizer, device, dtype, optimizations, options)
    log.info(
        "generator %s loaded from %s on %s/%s in %.1f s",
        resolved.model_id,
        resolved.path,
        device,
        dtype,
        time.perf_counter() - started,
    )
    return loaded


def prepare(
    resolved: ResolvedModel,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    device: torch.device,
    dtype: torch.dtype,
    optimizations: dict[str, Any],
    options: GeneratorOptions,
) -> Loaded:
    """Collect EOS and pad ids, the context size and the cache argument; compile if asked."""
    eos: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            eos.add(value)
        elif isinstance(value, list | tuple):
            eos.update(int(v) for v in value)
    pad = tokenizer.pad_token_id
    if pad is None:  # pads are masked out, so any id will do
        pad = min(eos) if eos else 0
    # transformers 5 renamed the forward argument past_key_values to cache.
    params = inspect.signature(model.forward).parameters
    cache_kwarg = "cache" if "cache" in params else "past_key_values"
    optimizations = {
        "attn_implementation": getattr(model.config, "_attn_implementation", options.attn_implementation),
        "quantize_int8": False,
        "compile": False,
        "kv_cache": "dynamic",
        "prune_finished": options.prune_finished,
        "max_batch_size": options.max_batch_size,
        "batch_wait_ms": options.batch_wait_ms,
        **optimizations,
    }
    loaded = Loaded(
        resolved=resolved,
        model=model,
        tokenizer=tokenizer,
        device=device,
        dtype=dtype,
        eos_ids=frozenset(eos),
        pad_id=int(pad),
        max_context=int(getattr(model.config, "max_position_embeddings", 0) or 1 << 30),
        cache_kwarg=cache_kwarg,
        optimizations=optimizations,
    )
    int8 = str(optimizations["quantize_int8"]).startswith("torch.ao")
    if options.compile and int8:
        # Measured: every dynamic-quantized Linear is a graph break, dynamo hits
        # its recompile limit and the result is slower than int8 alone.
        optimizations["compile"] = "skipped: dynamic int8 Linear graph-breaks under torch.compile"
    elif options.compile:
        # Compile only the one-token decode step over a StaticCache: fixed
        # shapes per call, and torch marks batch/length dynamic after the first
        # recompile. Prefill stays eager (its length varies every call).
        loaded.decode_step = torch.compile(forward_last_logits, dynamic=None)
        optimizations.update(
            compile="torch.compile(decode step, inductor)",
            kv_cache="static",
            prune_finished=False,
        )
    return loaded


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    name = name.lower()
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    dtype = DTYPES[name]
    assert dtype is not None
    if dtype == torch.float16 and device.type == "cpu":
        raise ConfigError("fp16 is not supported on CPU; use fp32 or bf16")
    return dtype


def forward_last_logits(
    model: PreTrainedModel,
    cache_kwarg: str,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    cache: Any,
) -> torch.Tensor:
    """One forward pass; logits of the last column only (``logits_to_keep=1`` skips the rest)."""
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=True,
        logits_to_keep=1,
        **{cache_kwarg: cache},
    )
    return out.logits[:, -1, :]


def _quantize_int8(model: PreTrainedModel) -> PreTrainedModel:
    """Dynamic int8 for every nn.Linear: int8 weights per output channel, activations per call.

    Per channel, because per-tensor scales measured worse on SmolLM2-135M: the
    first three greedy words matched fp32 on 1 of 16 fixed prompts, against 6 of
    16 per channel (which is also faster). Neither passes the default's gate (see
    ``GeneratorOptions.quantize_int8``).

    torch.ao.quantization is deprecated (moving to torchao) but still works in
    torch 2.13; its deprecation warnings are silenced here, once, at load.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        spec = {torch.nn.Linear: per_channel_dynamic_qconfig}
        quantized: PreTrainedModel = quantize_dynamic(model, spec, dtype=torch.qint8)
    return quantized
