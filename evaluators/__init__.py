"""Assay's checks and policy engine: a pure library with no web or queue imports.

Importing it has no side effects; entry points call
``evaluators.runtime.configure_process()`` before loading any model.
"""
