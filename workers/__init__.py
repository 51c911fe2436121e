"""Celery workers of Assay: job tasks, the job store and the text generator."""
