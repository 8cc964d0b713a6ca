"""Calibrating a trained memory's threshold: `CalibrateConfig` and `calibrate(cfg)`.

Decodes validation prompts (by default the held-out part of the training data that `flashmem train`
used, never the test set) with the memory on, sets tau to the config's percentile of the monitor's
entropies (thresholds.calibrate_threshold) and writes the new config into the memory folder.
"""
from __future__ import annotations

import sys
from dataclasses import MISSING, dataclass

from ..config import ModelOptions, check, option
from ..data.datasets import Example, load_examples, split_validation
from ..data.prompts import PROMPTS, system_prompt
from ..memory.registry import load_memory
from ..models.loader import load_backbone
from .thresholds import CalibrationResult, calibrate_threshold, plot_histogram


@dataclass(frozen=True, kw_only=True)
class CalibrateConfig(ModelOptions):
    """Everything `flashmem calibrate` needs."""

    memory: str = option(MISSING, "memory folder (from `flashmem train`); its config is updated")
    data: str = option(MISSING, "gsm8k, math500, mawps, recall[:...], a .jsonl file or a hub dataset")
    split: str = option("train", "split to read (default train: its held-out part is used)")
    val_size: int = option(64, "with --split train, the held-out part `flashmem train` used (same size and --seed); 0: all")
    seed: int = option(0, "seed of the held-out split (as in `flashmem train`)")
    data_dir: str | None = option(None, "folder of named datasets, NAME/SPLIT.jsonl (default $FLASHMEM_DATA_DIR, then the hub)")
    question_field: str | None = option(None, "JSONL question field")
    answer_field: str | None = option(None, "JSONL answer field")
    percentile: float | None = option(None, "percentile (default: the memory's, 85)")
    limit: int = option(64, "prompts to decode")
    max_new_tokens: int = option(128, "tokens per answer")
    batch_size: int = option(8, "prompts per generate call")
    recheck: int = option(8, "prompts re-decoded with the new threshold")
    hist: str | None = option(None, "plot the entropy histogram with the threshold into this .png", metavar="FILE.png")
    prompt: str = option("plain", "how the questions are asked (as in training)", choices=tuple(PROMPTS))

    def __post_init__(self) -> None:
        super().__post_init__()
        check([
            (self.percentile is None or 0 < self.percentile < 100, f"--percentile must be in (0, 100), got {self.percentile}"),
            (min(self.limit, self.max_new_tokens, self.batch_size) >= 1,
             "--limit, --max-new-tokens and --batch-size must be >= 1"),
            (self.recheck >= 0 and self.val_size >= 0, "--recheck and --val-size must be >= 0"),
        ], "calibration config")


def calibration_prompts(cfg: CalibrateConfig) -> list[Example]:
    examples, report = load_examples(cfg.data, cfg.split, cfg.data_dir, cfg.question_field, cfg.answer_field,
                                     None, "skip")
    if report.skipped:
        print(f"data: {report.summary()}", file=sys.stderr)
    if cfg.split == "train" and cfg.val_size > 0:
        _, examples = split_validation(examples, cfg.val_size, cfg.seed)
    return examples[: cfg.limit]


def calibrate(cfg: CalibrateConfig) -> tuple[CalibrationResult, float | None]:
    """Calibrate the memory folder's threshold and save its config; returns the result and the old tau."""
    examples = calibration_prompts(cfg)
    bb = load_backbone(cfg.model, dtype=cfg.dtype, device=cfg.device)
    memory = load_memory(cfg.memory, bb)
    result = calibrate_threshold(bb, memory, memory.config, examples, cfg.percentile, cfg.max_new_tokens,
                                 cfg.batch_size, cfg.recheck, system_prompt(cfg.prompt))
    result.config.save(cfg.memory)
    if cfg.hist:
        plot_histogram(cfg.hist, result)
    return result, memory.config.threshold
