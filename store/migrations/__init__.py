"""Alembic migrations of the Assay store (run with ``store.db.migrate``)."""
