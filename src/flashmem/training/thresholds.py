"""Every way of choosing the monitor threshold tau, in one place. Each returns a value or a new
MemoryConfig (`dataclasses.replace`); nothing toggles a config and restores it.

- the config's own threshold (set by training or calibration);
- before any training: the percentile of the untrained system's entropies over answer positions of
  training sequences, with prompt-end memory only (`sequence_threshold`, what `flashmem train` uses);
- without any data: the percentile over the prompts' own positions (`prompt_threshold`);
- calibration (the paper's rule): the percentile of the entropies of free decoding of validation
  prompts with the memory on, then a re-decode with the new tau to report what it does
  (`calibrate_threshold`). A memory without a threshold collects with the trigger off (prompt-end
  memory only), since there is nothing to fire on yet.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, replace

import numpy as np
import torch

from ..config import GenerationConfig, MemoryConfig
from ..data.datasets import Example
from ..data.prompts import encode_prompts
from ..decoding.engine import chunk_entropy, prefill
from ..decoding.generation import generate
from ..errors import FlashmemError
from ..memory.base import LatentMemory
from ..models.backbone import Backbone
from .scoring import find_insertions

# Entropies of at most the last positions of each prompt stand in for a calibration (cost bound).
PROMPT_POSITIONS = 256


def percentile_threshold(entropies, percentile: float) -> float:
    values = np.asarray(entropies, dtype=np.float64)
    if values.size == 0:
        raise FlashmemError("no monitor entropies were collected: the answers were empty")
    return float(np.percentile(values, percentile))


def needs_threshold(config: MemoryConfig | None) -> bool:
    """Whether a config fires on the monitor's entropy but has no threshold yet."""
    return config is not None and config.fires_on_entropy and config.threshold is None


@torch.no_grad()
def prompt_threshold(bb: Backbone, ids: torch.Tensor, mask: torch.Tensor, config: MemoryConfig) -> float:
    """Percentile of the monitor's entropy over the prompts' own positions (a day-one stand-in).

    The whole prompts are encoded, so the sinks are each row's real first tokens; entropies are
    read at the last PROMPT_POSITIONS slots, and only where a non-sink key is visible (the first
    n_sinks + 1 positions of a row have no defined entropy and would pull the percentile to 0).
    """
    state, out = prefill(bb, ids, mask, config.n_sinks, want_query=True,
                         normalize_entropy=config.entropy == "normalized")
    q = min(PROMPT_POSITIONS, ids.shape[1])
    entropy = chunk_entropy(bb, state, out.query[:, :, -q:])  # (B, q)
    real = mask.bool()[:, -q:]
    defined = real & (mask.long().cumsum(-1)[:, -q:] > config.n_sinks + 1)
    values = entropy[defined].float().cpu().numpy()
    return float(np.percentile(values, config.percentile)) if values.size else float("inf")


def sequence_threshold(bb: Backbone, memory: LatentMemory, sequences, config: MemoryConfig, autocast=None) -> float:
    """Percentile of the monitor's entropy at answer positions, triggers off (prompt-end memory only)."""
    collect = replace(config, trigger_memory=False)  # nothing to fire on yet: measure the system before any trigger
    entropies: list[float] = []
    for seq in sequences:
        with autocast or nullcontext():
            scored = find_insertions(bb, memory, seq.prompt.to(bb.device), seq.answer.to(bb.device),
                                     with_entropy=True, policy=collect)
        entropies.extend(scored.entropies)
    return percentile_threshold(entropies, config.percentile)


@dataclass
class CalibrationResult:
    config: MemoryConfig  # the calibrated config (threshold and percentile set)
    entropies: np.ndarray  # every decoding step's monitor entropy used for tau
    n_prompts: int
    trigger_rate: float  # fraction of re-decoded steps whose entropy is above tau
    consolidations_per_answer: float  # triggered (not prompt-end) consolidations per re-decoded answer
    n_recheck: int

    @property
    def threshold(self) -> float:
        return self.config.threshold

    @property
    def percentile(self) -> float:
        return self.config.percentile


@torch.no_grad()
def calibrate_threshold(bb: Backbone, memory: LatentMemory, config: MemoryConfig, examples: list[Example],
                        percentile: float | None = None, max_new_tokens: int = 128, batch_size: int = 8,
                        recheck: int = 8, system: str | None = None) -> CalibrationResult:
    """tau = the percentile of free-decoding entropies over `examples`; returns the new config and what it does."""
    if not examples:
        raise FlashmemError("calibration needs at least one prompt")
    percentile = config.percentile if percentile is None else percentile
    gen = GenerationConfig(max_new_tokens=max_new_tokens)
    collect = replace(config, trigger_memory=False) if needs_threshold(config) else config
    traces = _decode(bb, memory, collect, examples, gen, batch_size, system)
    entropies = np.array([e for tr in traces for e in tr.entropy], dtype=np.float64)
    calibrated = replace(config, threshold=percentile_threshold(entropies, percentile), percentile=percentile)
    again = _decode(bb, memory, calibrated, examples[:recheck], gen, batch_size, system) if recheck > 0 else []
    steps = [e for tr in again for e in tr.entropy]
    rate = float(np.mean(np.array(steps) > calibrated.threshold)) if steps else float("nan")
    per_answer = float(np.mean([len(tr.consolidations) for tr in again])) if again else float("nan")
    return CalibrationResult(calibrated, entropies, len(examples), rate, per_answer, len(again))


def _decode(bb: Backbone, memory: LatentMemory, policy: MemoryConfig, examples: list[Example],
            gen: GenerationConfig, batch_size: int, system: str | None = None):
    """Traces of free decoding with the monitor on, batched; prompts through the chat template."""
    traces = []
    for start in range(0, len(examples), batch_size):
        questions = [ex.question for ex in examples[start:start + batch_size]]
        ids, mask = encode_prompts(bb.tokenizer, questions, bb.device, system=system)
        traces.extend(generate(bb, ids, mask, memory, gen, monitor=True, policy=policy).traces)
    return traces


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
