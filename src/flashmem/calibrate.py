"""Calibrating the Cognitive Monitor's threshold tau, and `flashmem calibrate`.

tau is the given percentile (85 by default) of the monitor's entropy over the decoding steps of
validation prompts. Choice: we calibrate the system as it will run. Prompts are decoded freely with
the memory on (prompt-end latents, and triggered latents under the memory's current threshold if it
has one), so the entropies after an injection are part of the distribution, as they will be at run
time. A memory with no threshold yet collects with the trigger off (prompt-end memory only), since
there is nothing to fire on. A few prompts are then decoded again with the new tau to report what it
does: the fraction of steps above tau and the consolidations per answer.

Before any calibration exists, training takes tau from the untrained system's own entropies over
answer positions of training sequences (`threshold_from_sequences`).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import numpy as np
import torch

from .backbone import Backbone
from .config import GenerationConfig
from .data import Example, load_examples, split_validation
from .errors import FlashmemError
from .generation import generate
from .memory import LatentMemory
from .models import format_prompt


@dataclass
class CalibrationResult:
    threshold: float
    percentile: float
    entropies: np.ndarray  # every decoding step's monitor entropy used for tau
    n_prompts: int
    trigger_rate: float  # fraction of re-decoded steps whose entropy is above tau
    consolidations_per_answer: float  # triggered (not prompt-end) consolidations per re-decoded answer
    n_recheck: int


def percentile_threshold(entropies: list[float] | np.ndarray, percentile: float) -> float:
    values = np.asarray(entropies, dtype=np.float64)
    if values.size == 0:
        raise FlashmemError("no monitor entropies were collected: the answers were empty")
    return float(np.percentile(values, percentile))


def threshold_from_sequences(bb: Backbone, memory: LatentMemory, sequences, percentile: float, autocast=None) -> float:
    """Percentile of the monitor's entropy at answer positions, memory triggers off (only prompt-end memory)."""
    from contextlib import nullcontext

    from .sequence import find_insertions

    cfg = memory.config
    saved = cfg.trigger_memory
    cfg.trigger_memory = False  # nothing to fire on yet: measure the system before any trigger
    entropies: list[float] = []
    try:
        for seq in sequences:
            with autocast or nullcontext():
                scored = find_insertions(bb, memory, seq.prompt.to(bb.device), seq.answer.to(bb.device), with_entropy=True)
            entropies.extend(scored.entropies)
    finally:
        cfg.trigger_memory = saved
    return percentile_threshold(entropies, percentile)


def _decode(bb: Backbone, memory: LatentMemory, examples: list[Example], gen: GenerationConfig, batch_size: int):
    """Traces of free decoding, batched; prompts through the chat template."""
    tok = bb.tokenizer
    traces = []
    for start in range(0, len(examples), batch_size):
        texts = [format_prompt(tok, ex.question) for ex in examples[start:start + batch_size]]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        result = generate(bb, enc["input_ids"].to(bb.device), enc["attention_mask"].to(bb.device), memory, gen, monitor=True)
        traces.extend(result.traces)
    return traces


@torch.no_grad()
def calibrate_threshold(
    bb: Backbone, memory: LatentMemory, examples: list[Example], percentile: float | None = None,
    max_new_tokens: int = 128, batch_size: int = 8, recheck: int = 8,
) -> CalibrationResult:
    """Set memory.config.threshold to the percentile of decoding-step entropies; returns what it measured."""
    if not examples:
        raise FlashmemError("calibration needs at least one prompt")
    cfg = memory.config
    percentile = cfg.percentile if percentile is None else percentile
    gen = GenerationConfig(max_new_tokens=max_new_tokens)
    saved = cfg.trigger_memory
    # A monitor trigger without a threshold has nothing to fire on yet: collect with it off.
    cfg.trigger_memory = saved and (cfg.threshold is not None or cfg.trigger != "monitor")
    try:
        traces = _decode(bb, memory, examples, gen, batch_size)
    finally:
        cfg.trigger_memory = saved
    entropies = np.array([e for tr in traces for e in tr.entropy], dtype=np.float64)
    tau = percentile_threshold(entropies, percentile)
    cfg.threshold, cfg.percentile = tau, percentile
    again = _decode(bb, memory, examples[:recheck], gen, batch_size) if recheck > 0 else []
    steps = [e for tr in again for e in tr.entropy]
    rate = float(np.mean(np.array(steps) > tau)) if steps else float("nan")
    per_answer = float(np.mean([len(tr.consolidations) for tr in again])) if again else float("nan")
    return CalibrationResult(tau, percentile, entropies, len(examples), rate, per_answer, len(again))


def plot_histogram(path: str, result: CalibrationResult) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.hist(result.entropies, bins=60, color="tab:blue", alpha=0.8)
    ax.axvline(result.threshold, color="tab:red", ls="--",
               label=f"tau = {result.threshold:.3f} ({result.percentile:g}th percentile)")
    ax.set_xlabel("monitor entropy (nats, sinks removed)")
    ax.set_ylabel("decoding steps")
    ax.set_title(f"Cognitive Monitor entropy over {result.n_prompts} prompts")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def register(sub) -> None:
    from .cli import add_model_argument

    p = sub.add_parser("calibrate", help="set the monitor threshold from validation entropies",
                       description="Decode validation prompts with the memory on, take the given percentile of the "
                       "monitor's entropies as the threshold, and write it into the memory's config.")
    add_model_argument(p)
    p.add_argument("--memory", required=True, help="memory folder (from `flashmem train`); its config is updated")
    p.add_argument("--data", required=True, help="gsm8k, math500, mawps, a .jsonl file or a hub dataset")
    p.add_argument("--split", default="train", help="split to read (default train: its held-out part is used)")
    p.add_argument("--val-size", type=int, default=64,
                   help="with --split train, use the held-out part `flashmem train` used (same size and --seed); 0: all")
    p.add_argument("--seed", type=int, default=0, help="seed of the held-out split (as in `flashmem train`)")
    p.add_argument("--data-dir", help="folder of named datasets (default $FLASHMEM_DATA_DIR or ../shared/data)")
    p.add_argument("--question-field", help="JSONL question field")
    p.add_argument("--answer-field", help="JSONL answer field")
    p.add_argument("--percentile", type=float, default=None, help="percentile (default: the memory's, 85)")
    p.add_argument("--limit", type=int, default=64, help="prompts to decode (default 64)")
    p.add_argument("--max-new-tokens", type=int, default=128, help="tokens per answer (default 128)")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per generate call (default 8)")
    p.add_argument("--recheck", type=int, default=8, help="prompts re-decoded with the new threshold (default 8)")
    p.add_argument("--hist", metavar="FILE.png", help="plot the entropy histogram with the threshold")
    p.set_defaults(func=run)


def _prompts(args: argparse.Namespace) -> list[Example]:
    examples, report = load_examples(args.data, args.split, args.data_dir, args.question_field,
                                     args.answer_field, None, "skip")
    if report.skipped:
        print(f"data: {report.summary()}", file=sys.stderr)
    if args.split == "train" and args.val_size > 0:
        _, examples = split_validation(examples, args.val_size, args.seed)
    return examples[: args.limit] if args.limit else examples


def run(args: argparse.Namespace) -> int:
    from .memory import load_memory
    from .models import load_backbone

    if args.percentile is not None and not 0 < args.percentile < 100:
        raise FlashmemError(f"--percentile must be in (0, 100), got {args.percentile}")
    examples = _prompts(args)
    model, tokenizer = load_backbone(args.model, dtype=args.dtype)
    bb = Backbone(model, tokenizer, name=args.model)
    memory = load_memory(args.memory, bb)
    before = memory.config.threshold
    result = calibrate_threshold(bb, memory, examples, args.percentile, args.max_new_tokens, args.batch_size, args.recheck)
    memory.config.save(args.memory)
    print(f"threshold: {result.threshold:.4f} ({result.percentile:g}th percentile of {result.entropies.size} "
          f"decoding steps over {result.n_prompts} prompts; was {before})")
    print(f"trigger rate: {result.trigger_rate:.3f} of steps above tau; consolidations per answer: "
          f"{result.consolidations_per_answer:.2f} (budget {memory.config.budget}, gap {memory.config.min_gap}; "
          f"re-decoded {result.n_recheck} prompts)")
    if args.hist:
        plot_histogram(args.hist, result)
        print(f"histogram: {args.hist}", file=sys.stderr)
    return 0


__all__ = ["CalibrationResult", "calibrate_threshold", "percentile_threshold", "threshold_from_sequences"]
