"""Audit runs, in one place: a suite of prompts in, a gated report out.

The story, module by module (each a pure function of its inputs; the worker
and the CLI only supply a store and a way to run a batch):
"""
