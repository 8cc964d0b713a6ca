"""What each `flashmem` command does with its typed config: call the library job, print the result."""
from __future__ import annotations

import json
import sys
from dataclasses import MISSING, dataclass

from ..api import FlashMem
from ..bench import BenchConfig, bench
from ..calibrate import CalibrateConfig, calibrate
from ..config import GenerationConfig, ModelOptions, option
from ..errors import FlashmemError
from ..evaluate import EvalConfig, evaluate
from ..files import atomic_write_text
from ..report import bench_markdown, compare_runs, comparison_markdown
from ..trace import plot_trace, trace_record, write_trace
from ..train import TrainConfig, train


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

    def __post_init__(self) -> None:
        if len(self.runs) < 2:
            raise FlashmemError("compare needs at least two runs")


def run_compare(cfg: CompareCommand) -> int:
    comparison = compare_runs(cfg.runs, n_boot=cfg.n_boot)
    print(comparison_markdown(comparison))
    if cfg.out:
        atomic_write_text(cfg.out, json.dumps(comparison, indent=2, default=str) + "\n")
        print(f"comparison: {cfg.out}", file=sys.stderr)
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


def run_eval(cfg: EvalConfig) -> int:
    print(evaluate(cfg)["markdown"])
    return 0


def run_bench(cfg: BenchConfig) -> int:
    print(bench_markdown(bench(cfg)))
    if cfg.plot:
        print(f"plot: {cfg.plot}", file=sys.stderr)
    return 0
