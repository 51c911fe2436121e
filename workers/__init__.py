"""Assay workers: Celery app, thin tasks, model loading and generation."""

# Sets the offline and OpenMP environment before anything here imports torch.
import evaluators  # noqa: F401
