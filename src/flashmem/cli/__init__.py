"""The `flashmem` command: one subcommand per job, each a typed config (its argparse derived from it)
and a function; `lm-eval` alone hands its arguments to another tool's command line. User errors
(FlashmemError) print one line and exit 2; Ctrl-C exits 130 after the command saved what it had."""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Callable

from ..errors import FlashmemError
from ..evaluation.bench import BenchConfig
from ..models.runtime import set_threads
from ..training.calibrate import CalibrateConfig
from ..training.train import TrainConfig
from ..version import __version__
from .commands import (
    CompareCommand,
    EvalCommand,
    GenerateCommand,
    run_bench,
    run_calibrate,
    run_compare,
    run_eval,
    run_generate,
    run_train,
)
from .demo import DemoConfig, run_demo
from .lm_eval import DESCRIPTION as LM_EVAL_DESCRIPTION
from .lm_eval import run_lm_eval
from .options import add_arguments, from_args


@dataclass(frozen=True)
class Command:
    config: type
    run: Callable[..., int]
    help: str
    description: str


COMMANDS = {
    "generate": Command(GenerateCommand, run_generate, "generate an answer with FlashMem memory",
                        "Generate an answer to PROMPT with the backbone and its latent memory."),
    "train": Command(TrainConfig, run_train, "train the latent memory (backbone frozen)",
                     "Train FlashMem's consolidator (or a baseline memory) on question/answer data: cross-entropy "
                     "on the answer tokens, gradients through the frozen backbone."),
    "calibrate": Command(CalibrateConfig, run_calibrate, "set the monitor threshold from validation entropies",
                         "Decode validation prompts with the memory on, take the given percentile of the monitor's "
                         "entropies as the threshold, and write it into the memory's config."),
    "eval": Command(EvalCommand, run_eval, "evaluate a memory method: accuracy, answer NLL, cost",
                    "Evaluate vanilla decoding or a latent memory on a question set. Per-question records go to "
                    "OUT.records.jsonl (rerun the same command to resume), the summary to OUT and a markdown table "
                    "to OUT.md. --also adds more runs on the same questions in the same pass."),
    "compare": Command(CompareCommand, run_compare, "paired comparison of eval runs on their shared questions",
                       "Accuracy and answer-NLL differences between eval runs on the questions they all answered, "
                       "with paired bootstrap intervals; works on an interrupted run's records."),
    "bench": Command(BenchConfig, run_bench, "efficiency table: vanilla vs FlashMem vs MemGen",
                     "Decoding speed, per-step latency and peak memory of vanilla decoding, FlashMem and MemGen at "
                     "several context lengths, batch sizes and schedules, on this machine."),
    "demo": Command(DemoConfig, run_demo, "train, calibrate, evaluate and benchmark end to end; write a report",
                    "The main job: FlashMem vs the plain model, MemGen and a soft prompt, trained with one budget "
                    "and measured on held-out questions. Resumable."),
}

# Commands whose arguments belong to another tool: argv after the name is handed over as it is.
PASSTHROUGH: dict[str, tuple[Callable[[list[str]], int], str, str]] = {
    "lm-eval": (run_lm_eval, "run EleutherAI's lm-evaluation-harness on flashmem (its own options)", LM_EVAL_DESCRIPTION),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flashmem", description="FlashMem latent memory for a frozen Hugging Face causal LM: generate, train, "
        "calibrate, evaluate and benchmark against the plain model and MemGen.")
    parser.add_argument("--version", action="version", version=f"flashmem {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, command in COMMANDS.items():
        p = sub.add_parser(name, help=command.help, description=command.description)
        add_arguments(p, command.config)
        p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's; 1 is far steadier on a "
                       "shared machine)")
    for name, (_, help_text, description) in PASSTHROUGH.items():  # listed in --help; main() dispatches them
        sub.add_parser(name, help=help_text, description=description, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] and argv[0] in PASSTHROUGH:
        return _passthrough(argv[0], argv[1:])
    args = build_parser().parse_args(argv)
    command = COMMANDS[args.command]

    def job() -> int:
        set_threads(args.threads)
        return int(command.run(from_args(command.config, args)) or 0)
    return _guarded(args.command, job)


def _passthrough(name: str, argv: list[str]) -> int:
    return _guarded(name, lambda: PASSTHROUGH[name][0](argv))


def _guarded(name: str, job: Callable[[], int]) -> int:
    """Run a command: a user error prints one line and exits 2, Ctrl-C exits 130."""
    _quiet_transformers()
    try:
        return job()
    except FlashmemError as err:
        print(f"flashmem {name}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"flashmem {name}: interrupted", file=sys.stderr)
        return 130


def _quiet_transformers() -> None:
    """Our own progress bars say what is happening; transformers' per-load bars are noise."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
