"""What each `flashmem` command does with its typed config: call the library job, print the result."""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import MISSING, dataclass, fields, replace

from ..api import FlashMem
from ..config import GenerationConfig, ModelOptions, option
from ..decoding.trace import plot_trace, trace_record, write_trace
from ..errors import FlashmemError
from ..evaluation.bench import BenchConfig, bench
from ..evaluation.evaluate import EvalConfig, evaluate_together
from ..evaluation.grading import GRADERS, disagreements, kind_of
from ..evaluation.report import bench_markdown, compare_runs, comparison_markdown, load_run
from ..files import atomic_write_text
from ..training.calibrate import CalibrateConfig, calibrate
from ..training.train import TrainConfig, train
from .options import add_arguments


@dataclass(frozen=True, kw_only=True)
class GenerateCommand(ModelOptions):
    """`flashmem generate`: one prompt, with or without memory."""

    prompt: str = option(MISSING, "the question or instruction (the chat template is applied)", positional=True)
    memory: str | None = option(None, "trained memory folder (from `flashmem train`); default: untrained")
    no_memory: bool = option(False, "plain decoding, no latents")
    max_new_tokens: int = option(256, "most tokens to generate")
    temperature: float = option(0.0, "0 = greedy")
    top_p: float = option(1.0, "nucleus mass when sampling")
    seed: int = option(0, "sampling seed")
    trace: str | None = option(None, "write the per-step monitor trace as JSON", metavar="FILE.json")
    plot: str | None = option(None, "plot the entropy curve, threshold and triggers", metavar="FILE.png")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.prompt.strip():
            raise FlashmemError("empty prompt")


def run_generate(cfg: GenerateCommand) -> int:
    gen = GenerationConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                           seed=cfg.seed, use_memory=not cfg.no_memory)
    fm = FlashMem.load(cfg.model, memory=cfg.memory, dtype=cfg.dtype, device=cfg.device)
    if not fm.trained and gen.use_memory:
        print("note: no --memory given: running an UNTRAINED consolidator (plumbing check; "
              "train one with `flashmem train`)", file=sys.stderr)
    ids, mask = fm.encode([cfg.prompt])
    set_here = fm.ensure_threshold(ids, mask) if gen.use_memory else None
    if set_here is not None:
        print(f"note: memory has no calibrated threshold; using the {fm.config.percentile:g}th "
              f"percentile of this prompt's entropies: {set_here:.3f}", file=sys.stderr)
    answer = fm.generate([cfg.prompt], gen)[0]
    print(answer.text)
    if cfg.trace:
        write_trace(cfg.trace, [trace_record(answer.trace, fm.backbone.tokenizer, cfg.prompt, answer.text)])
        print(f"trace: {cfg.trace} ({len(answer.trace.consolidations)} consolidations after the prompt-end "
              f"memory)" if answer.trace.prompt_memory else f"trace: {cfg.trace}", file=sys.stderr)
    if cfg.plot:
        plot_trace(cfg.plot, answer.trace)
        print(f"plot: {cfg.plot}", file=sys.stderr)
    return 0


@dataclass(frozen=True, kw_only=True)
class CompareCommand:
    """`flashmem compare`: paired differences between finished (or interrupted) eval runs."""

    runs: list[str] = option(MISSING, "eval summaries (OUT.json) or their records (OUT.records.jsonl); pairs are "
                             "later minus earlier", positional=True)
    out: str | None = option(None, "also write the comparison as JSON", metavar="FILE.json")
    n_boot: int = option(10000, "bootstrap resamples")
    grader: str | None = option(None, "grade every run's answers again with this grader (default: as each run was "
                                "graded)", choices=GRADERS)
    disagreements: str | None = option(None, "write, per run, the answers on which flashmem's grader and math-verify "
                                       "disagree (for a hand check)", metavar="FILE.json")

    def __post_init__(self) -> None:
        if len(self.runs) < 2:
            raise FlashmemError("compare needs at least two runs")


def run_compare(cfg: CompareCommand) -> int:
    comparison = compare_runs(cfg.runs, n_boot=cfg.n_boot, grader=cfg.grader)
    print(comparison_markdown(comparison))
    if cfg.out:
        atomic_write_text(cfg.out, json.dumps(comparison, indent=2, default=str) + "\n")
        print(f"comparison: {cfg.out}", file=sys.stderr)
    if cfg.disagreements:
        found = {path: disagreements(run["records"], kind_of(run["settings"]))
                 for path, run in ((p, load_run(p)) for p in cfg.runs)}
        atomic_write_text(cfg.disagreements, json.dumps(found, indent=2) + "\n")
        for path, rows in found.items():
            print(f"graders disagree on {len(rows)} answers of {path}", file=sys.stderr)
        print(f"disagreements: {cfg.disagreements}", file=sys.stderr)
    return 0


def run_train(cfg: TrainConfig) -> int:
    return train(cfg)


def run_calibrate(cfg: CalibrateConfig) -> int:
    result, before = calibrate(cfg)
    print(f"threshold: {result.threshold:.4f} ({result.percentile:g}th percentile of {result.entropies.size} "
          f"decoding steps over {result.n_prompts} prompts; was {before})")
    print(f"trigger rate: {result.trigger_rate:.3f} of steps above tau; consolidations per answer: "
          f"{result.consolidations_per_answer:.2f} (budget {result.config.budget}, gap {result.config.min_gap}; "
          f"re-decoded {result.n_recheck} prompts)")
    if cfg.hist:
        print(f"histogram: {cfg.hist}", file=sys.stderr)
    return 0


# What an --also run may set for itself: which memory it evaluates, how, and where it writes. The rest
# (model, data, limit, batch size, prompt) decides the prompts every run of the pass shares.
ALSO_FIELDS = ("method", "memory", "untrained", "prompt_memory_only", "ablate", "prompt_window", "nll",
               "max_new_tokens", "out", "compare")
# A run that names another method starts from no memory rather than inheriting the main run's.
METHOD_RESETS = {"memory": None, "untrained": False, "ablate": "none", "prompt_memory_only": False}


def _flag(f) -> str:
    name = f.name.replace("_", "-")
    return f"--no-{name}" if f.default is True else f"--{name}"


ALSO_FLAGS = ", ".join(_flag(f) for f in fields(EvalConfig) if f.name in ALSO_FIELDS)


@dataclass(frozen=True, kw_only=True)
class EvalCommand(EvalConfig):
    """`flashmem eval`: one run, or several on the same questions in one pass (--also)."""

    also: list[str] = option(default_factory=list, metavar="'FLAGS'", help=(
        "another run on the same questions in the same pass, given as its own quoted flags that replace this "
        "command's (e.g. '--method vanilla --out v.json'; a new --method starts without a memory); allowed: "
        + ALSO_FLAGS + ". The runs share each batch's prompt "
        "prefill, so on long prompts several runs cost little more than one"))


class _AlsoParser(argparse.ArgumentParser):
    def error(self, message: str):  # a user error, not argparse's usage dump and exit
        raise FlashmemError(message)


def also_configs(cmd: EvalCommand) -> list[EvalConfig]:
    """The main run and one config per --also, each checked like a command line of its own."""
    base = EvalConfig(**{f.name: getattr(cmd, f.name) for f in fields(EvalConfig)})
    parser = _AlsoParser(prog="flashmem eval --also", add_help=False)
    add_arguments(parser, EvalConfig, suppress=True)
    configs = [base]
    for text in cmd.also:
        try:
            given = vars(parser.parse_args(shlex.split(text)))
        except (FlashmemError, ValueError) as err:
            raise FlashmemError(f"--also {text!r}: {err}") from None
        shared = sorted(set(given) - set(ALSO_FIELDS))
        if shared:
            raise FlashmemError(f"--also {text!r}: --{shared[0].replace('_', '-')} is shared by every run of the pass; "
                                "give it once, outside --also")
        if "out" not in given:
            raise FlashmemError(f"--also {text!r} needs its own --out")
        given = {**(METHOD_RESETS if "method" in given else {}), "compare": [], **given}
        configs.append(replace(base, **given))
    return configs


def run_eval(cmd: EvalCommand) -> int:
    summaries = evaluate_together(also_configs(cmd))
    print("\n\n".join(summary["markdown"] for summary in summaries))
    return 0


def run_bench(cfg: BenchConfig) -> int:
    print(bench_markdown(bench(cfg)))
    if cfg.plot:
        print(f"plot: {cfg.plot}", file=sys.stderr)
    return 0
