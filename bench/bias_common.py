"""Shared set-up of the bias-check benchmarks (winobias.py, toxigen_bias.py)."""

from __future__ import annotations

import argparse
from typing import Any

from evaluators.checks.bias import BiasCheck, BiasConfig


def add_scorer_args(parser: argparse.ArgumentParser, batch_help: str) -> None:
    parser.add_argument(
        "--checkpoint", help="Detoxify checkpoint folder for the scorer (default: profanity tier)"
    )
    parser.add_argument("--batch", type=int, default=64, help=batch_help)
    parser.add_argument(
        "--threads", type=int, default=0,
        help="torch CPU threads; 0 keeps torch's default (1 beats 2 when the cores are shared)",
    )  # fmt: skip


def bias_check(args: argparse.Namespace) -> tuple[BiasCheck, BiasConfig]:
    """The bias check the arguments describe, loaded."""
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    fields: dict[str, Any] = {"check": "bias"}
    if args.checkpoint:
        fields["toxicity"] = {"profanity": None, "detoxify": {"checkpoint": args.checkpoint, "device": "cpu"}}
    config = BiasConfig.model_validate(fields)
    check = BiasCheck(config)
    check.load()
    return check, config
