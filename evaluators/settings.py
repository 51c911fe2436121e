"""Settings read from ``ASSAY_*`` environment variables, typed and validated by pydantic-settings.

Every layer (evaluators, workers, service) has its own settings class, and
each variable feeds exactly one field of one class: ``ASSAY_DEVICE`` and
``ASSAY_POLICY_DIR`` live here, and the workers and the API read them from
here. This module also holds what the three classes share: the base class
and the parse-once accessor.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Generic, Literal, TypeVar

from pydantic import AfterValidator, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from evaluators.errors import ConfigError

# Where policies/, suites/ and the default caches live: the checkout, or
# ASSAY_HOME when the package is installed elsewhere (the container images).
# A constant, not a field: field defaults in every layer are built from it.
PROJECT_ROOT = Path(os.environ.get("ASSAY_HOME") or Path(__file__).resolve().parent.parent)

# A path from the environment; ``~`` expands as in a shell.
UserPath = Annotated[Path, AfterValidator(lambda p: p.expanduser())]


class AssaySettings(BaseSettings):
    """Base of every layer's settings: field ``x`` comes from ``ASSAY_X``, and values are immutable."""

    model_config = SettingsConfigDict(
        env_prefix="ASSAY_",
        frozen=True,
        # Field docstrings become the fields' descriptions.
        use_attribute_docstrings=True,
        # Fields such as model_dir are ours, not pydantic's model_* namespace.
        protected_namespaces=(),
    )


S = TypeVar("S", bound=AssaySettings)


class SettingsAccessor(Generic[S]):
    """Parses one settings class from the environment on first call; later calls return the same object.

    ``reset()`` makes the next call read the environment again; ``override()``
    substitutes an object for the length of a ``with`` block. Both are for tests.
    """

    def __init__(self, cls: type[S]) -> None:
        self.cls = cls
        self._value: S | None = None
        self._lock = threading.Lock()

    def __call__(self) -> S:
        with self._lock:
            if self._value is None:
                self._value = parse_settings(self.cls)
            return self._value

    def reset(self) -> None:
        """Forget the parsed settings: the next call reads the environment again."""
        with self._lock:
            self._value = None

    @contextmanager
    def override(self, settings: S) -> Iterator[S]:
        """Return ``settings`` from every call inside the block, then what was there before."""
        with self._lock:
            previous, self._value = self._value, settings
        try:
            yield settings
        finally:
            with self._lock:
                self._value = previous


def parse_settings(cls: type[S]) -> S:
    """Build ``cls`` from the environment; an invalid value is a ``ConfigError`` naming its variable."""
    try:
        return cls()
    except ValidationError as exc:
        prefix = cls.model_config.get("env_prefix", "")
        problems = "; ".join(
            f"{prefix}{'.'.join(str(p) for p in err['loc']).upper()}={err['input']!r}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"invalid environment setting: {problems}") from exc


def _default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "assay"


class EvaluatorSettings(AssaySettings):
    """Where the checks find their models and policies, and how they run them."""

    model_dir: UserPath = PROJECT_ROOT / ".cache" / "models"
    """Folder for converted and trained models (ASSAY_MODEL_DIR)."""

    policy_dir: UserPath = PROJECT_ROOT / "policies"
    """Folder of policy YAML files; the API and the workers load the same ones (ASSAY_POLICY_DIR)."""

    device: str = "auto"
    """Torch device for classifier checks and the generator: auto, cpu or cuda (ASSAY_DEVICE)."""

    torch_threads: int = Field(default=0, ge=0)
    """Intra-op threads for torch on CPU; 0 keeps the process's default (ASSAY_TORCH_THREADS).
    ONNX Runtime sessions use the same count."""

    onnx: bool = True
    """ONNX Runtime instead of torch for the MiniLM forwards on CPU where it is faster and matches
    fp32 torch (the abuse classifier, the PII tagger's and the drift sentence encoder); exported once
    per set of weights into the cache dir. false: torch everywhere (ASSAY_ONNX)."""

    onnx_max_batch: int = Field(default=8, ge=0)
    """Largest batch (texts per forward) ONNX Runtime runs; larger batches run on torch, which was
    faster for full micro-batches on 2 CPU cores while ONNX Runtime was for a few texts; 0: ONNX
    Runtime for every batch (ASSAY_ONNX_MAX_BATCH)."""

    log_format: Literal["json", "text"] = "json"
    """Log lines of the API, the workers and the CLI: JSON objects or plain text (ASSAY_LOG_FORMAT)."""

    cache_dir: UserPath = Field(default_factory=_default_cache_dir)
    """Build cache shared by every checkout on this machine: trained default models live here,
    keyed by a hash of their data, code and configuration (ASSAY_CACHE_DIR)."""


evaluator_settings = SettingsAccessor(EvaluatorSettings)
"""The evaluators' settings, parsed once per process."""


def resolve_device(device: str) -> str:
    """Turn ``auto`` into ``cuda`` when a GPU is present, else ``cpu``."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def apply_torch_threads(settings: EvaluatorSettings | None = None, *, default: int = 0) -> int:
    """Apply ``ASSAY_TORCH_THREADS`` (else ``default``) to this process; 0 leaves torch's own.

    Returns the thread count torch now uses.
    """
    settings = settings or evaluator_settings()
    import torch

    threads = settings.torch_threads or default
    if threads > 0:
        torch.set_num_threads(threads)
    return int(torch.get_num_threads())
