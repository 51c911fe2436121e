"""Checks: one small contract (``Check``) and one class per kind of check."""
