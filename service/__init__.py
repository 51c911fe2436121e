"""Assay's HTTP API (Litestar) and command line."""

# Sets the offline and OpenMP environment before anything here imports torch.
import evaluators  # noqa: F401
