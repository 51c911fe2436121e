"""Alembic migrations of the Assay store (run with ``workers.store.migrate``)."""
