"""The `flashmem` command: one subcommand per job, each defined beside the code it runs.

Every subcommand module has register(subparsers), which adds its parser and sets func(args) -> int.
User errors (FlashmemError) print one line and exit 2; Ctrl-C exits 130 after the command saved
what it had.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from .errors import FlashmemError

# name of the module (in this package) that defines each subcommand, in help order
SUBCOMMANDS = ("generate_cmd", "train", "calibrate", "evaluate", "bench", "demo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flashmem",
        description="FlashMem latent memory for a frozen Hugging Face causal LM: generate, train, "
        "calibrate, evaluate and benchmark against the plain model and MemGen.",
    )
    parser.add_argument("--version", action="version", version=f"flashmem {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f".{name}", __package__)
        except ModuleNotFoundError as err:
            if err.name and err.name.endswith(f".{name}"):
                continue  # a subcommand not built yet in this checkout
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _quiet_transformers()
    try:
        set_threads(getattr(args, "threads", None))
        return int(args.func(args) or 0)
    except FlashmemError as err:
        print(f"flashmem {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"flashmem {args.command}: interrupted", file=sys.stderr)
        return 130


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default="smollm2-135m",
        help="alias (smollm2-135m, the embedded default), hub id, local folder or .gguf file",
    )
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="backbone dtype")
    parser.add_argument("--threads", type=int,
                        help="torch threads (default: torch's; 1 is far steadier on a shared machine)")


def set_threads(threads: int | None) -> None:
    if threads is not None:
        if threads < 1:
            raise FlashmemError(f"--threads must be >= 1, got {threads}")
        import torch

        torch.set_num_threads(threads)


def _quiet_transformers() -> None:
    """Our own progress bars say what is happening; transformers' per-load bars are noise."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
