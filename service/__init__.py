"""Assay's HTTP API (Litestar) and command line."""
