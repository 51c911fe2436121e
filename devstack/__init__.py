"""Development tooling shared by the integration tests and the benchmarks: a Redis, and Assay's processes.

Not part of the installed package; tests and ``bench/`` import it from the repository root.
"""
