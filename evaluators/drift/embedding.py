"""Reduced sentence embeddings: MiniLM's 384 dimensions projected to 32 by a fixed random matrix.

A Gaussian random projection (Johnson-Lindenstrauss) keeps distances between
unit vectors to within a few percent at this size, needs no fitting (so every
process, and every month, projects the same way), and cuts what the store
keeps per sampled event from 1.5 KB to 128 bytes. Rows are renormalised, so
cosine similarity is a dot product. The planted topic-shift test measures that
the MMD test keeps its power at 32 dimensions.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

FULL_DIM = 384
REDUCED_DIM = 32
_SEED = 20260901  # fixed forever: changing it makes stored embeddings incomparable


@lru_cache(maxsize=1)
def projection() -> np.ndarray:
    """The (384, 32) projection; the same in every process."""
    rng = np.random.default_rng(_SEED)
    return (rng.standard_normal((FULL_DIM, REDUCED_DIM)) / np.sqrt(REDUCED_DIM)).astype(np.float32)


def reduce(full: np.ndarray) -> np.ndarray:
    """Unit-norm reduced rows of ``full`` (n, 384) -> (n, 32) float32."""
    if full.ndim != 2 or full.shape[1] != FULL_DIM:
        raise ValueError(f"expected (n, {FULL_DIM}) embeddings, got {full.shape}")
    out = full.astype(np.float32) @ projection()
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.maximum(norms, 1e-12)


def embed(texts: Sequence[str]) -> np.ndarray:
    """Reduced embeddings of ``texts`` with the process's MiniLM encoder (loaded once)."""
    from evaluators.onnx_models import sentence_encoder

    if not texts:
        return np.zeros((0, REDUCED_DIM), dtype=np.float32)
    return reduce(sentence_encoder().encode(list(texts)).numpy())
