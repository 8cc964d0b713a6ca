"""Training a latent memory: `TrainConfig` (every knob of `flashmem train`) and `train(cfg)`.

Loss = summed answer NLL over the examples of an optimiser step / their answer tokens, computed by
scoring.training_nll (memory where inference would put it). AdamW on the memory's parameters only,
linear warm-up then cosine decay, gradient clipping, optional bf16 autocast. One example per
micro-batch (insertion points differ per sequence), `batch_size` of them per step by gradient
accumulation. Under `accelerate launch` each process takes a strided share of every step's examples
and the gradients are summed across processes; only the main process writes. The loop itself is
trainer.py; this file turns a config into its inputs.
"""
from __future__ import annotations

import math
import random
import sys
from dataclasses import MISSING, asdict, dataclass, fields, replace

import numpy as np
import torch

from ..config import MemoryConfig, ModelOptions, check, option
from ..data.datasets import ON_ERROR, load_examples, memgen_target, split_validation
from ..data.prompts import PROMPTS, system_prompt
from ..data.recall import GIST_FORMS, RecallStream, is_recall_spec, parse_spec
from ..errors import FlashmemError
from ..memory.registry import METHOD_NAMES, build_memory, default_config, identity_mismatch
from ..models.loader import load_backbone
from .batching import LazySequences, Sequence, encode_examples
from .checkpoint import Checkpoint, find_checkpoint, load_checkpoint
from .objectives import Objective
from .targets import SelfTargetSettings, build_self_targets
from .thresholds import needs_threshold, sequence_threshold
from .trainer import Trainer

THRESHOLD_EXAMPLES = 32  # training sequences whose entropies set tau before any calibration
# Default peak learning rates. The soft prompt's 4,608 values need far larger steps than the 4M-parameter
# consolidator (at 3e-4 it barely moved): 1e-1 had the lowest held-out loss of its 30-step sweeps on GSM8K
# and was within 10% of the best (3e-1) on recall (RESULTS.md, "fair controls").
MEMORY_LR, SOFTPROMPT_LR = 3e-4, 1e-1
# Fields that may differ on resume because they do not change what is computed.
FREE_ON_RESUME = {"resume", "minutes", "stop_at", "save_every", "eval_every", "out", "self_batch_size"}


@dataclass(frozen=True, kw_only=True)
class TrainConfig(ModelOptions):
    """Everything `flashmem train` needs; saved in the checkpoint and compared field by field on resume."""

    data: str = option(MISSING, "gsm8k, math500, mawps, recall[:...], a .jsonl file or a hub dataset")
    out: str = option(MISSING, "output folder: memory, checkpoint/, log.jsonl")
    method: str = option("flashmem", "memory to train", choices=METHOD_NAMES)
    steps: int | None = option(None, "optimiser steps (default: one epoch)")
    epochs: float | None = option(None, "passes over the training data (default 1; exclusive with --steps)")
    resume: bool = option(False, "continue from OUT/checkpoint")
    targets: str = option("reference", "answers to learn: the dataset's, the backbone's own correct samples, or "
                          "MemGen's (GSM8K: the rationale with its calculator annotations, then \\boxed{answer}; "
                          "with --prompt memgen this is the recipe of MemGen and the FlashMem paper)",
                          choices=("reference", "self", "memgen"))
    self_samples: int = option(4, "--targets self: samples per question")
    self_max_new_tokens: int = option(256, "--targets self: tokens per sample")
    self_temperature: float = option(0.7, "--targets self: sampling temperature (0: greedy, one sample is enough)")
    self_batch_size: int = option(16, "--targets self: sequences per generate call (questions x samples); "
                                      "larger batches decode more tokens per second")
    self_targets_file: str | None = option(None, "--targets self: the samples' cache, shareable between runs "
                                           "(default OUT/self_targets.jsonl)", metavar="FILE.jsonl")
    self_reuse: str | None = option(None, "--targets self: an earlier collection whose solved questions keep their "
                                    "solutions; only its unsolved ones are sampled (targets greedy decoding misses)",
                                    metavar="FILE.jsonl")
    lr: float | None = option(None, f"peak learning rate (default {MEMORY_LR:g}; {SOFTPROMPT_LR:g} for the soft prompt)")
    weight_decay: float = option(0.0, "AdamW weight decay")
    batch_size: int = option(4, "examples per optimiser step")
    grad_clip: float = option(0.53, "gradient norm clip (the paper's 0.53)")
    warmup: float = option(0.05, "warm-up fraction of the steps")
    bf16: bool = option(False, "bf16 autocast (the memory's weights and optimiser stay float32)")
    seed: int = option(0, "seed of initialisation, data order and split")
    max_length: int = option(512, "longest prompt+answer in tokens")
    on_bad_data: str = option("stop", "bad rows and over-long sequences: stop with file and line, or skip them",
                              choices=ON_ERROR)
    data_dir: str | None = option(None, "folder of named datasets, NAME/SPLIT.jsonl (default $FLASHMEM_DATA_DIR, then the hub)")
    question_field: str | None = option(None, "JSONL question field (default: guessed)")
    answer_field: str | None = option(None, "JSONL answer field (default: guessed)")
    limit: int | None = option(None, "read at most N examples")
    eval_every: int = option(50, "held-out loss every N steps (0: never)")
    val_size: int = option(64, "held-out examples taken from the training data (0: none)")
    save_every: int = option(50, "checkpoint every N steps (0: only at the end)")
    minutes: float | None = option(None, "stop and save cleanly after M minutes of training")
    stop_at: int | None = option(None, "stop and save cleanly after step N; the learning-rate schedule stays that of "
                                 "--steps, so runs compared at equal steps share one schedule", metavar="N")
    prompt: str = option("plain", "how the questions are asked (plain: as they are; boxed: a system prompt asking "
                         "for \\boxed{} final answers; memgen: MemGen's instruction and question frame)",
                         choices=tuple(PROMPTS))
    sft_weight: float = option(1.0, "weight of the answer's NLL with the memory (the paper's objective)")
    kl_weight: float = option(0.0, "weight of distillation: KL per answer token from the same frozen model with the "
                              "whole prompt in view and no memory")
    recon_weight: float = option(0.0, "weight of reconstructing what the cut evicted (the prompt between the sinks "
                                 "and --prompt-window) from the memory alone; needs --prompt-window")
    recon_tokens: int = option(256, "--recon-weight: most evicted tokens scored (the first ones)")
    recon_digit_weight: float = option(1.0, "--recon-weight: weight of tokens holding a digit (a recall fact's value)")
    gist_weight: float = option(0.0, "weight of naming the document's gist: latent j's token distribution under the "
                                "frozen LM head against token j of the gist (--gist); needs --stream and the "
                                "flashmem memory's --readout soft-token")
    gist: str = option("pairs", "--gist-weight: what the latents must name, every fact in document order: pairs "
                       "(\"blue locker 4821; red safe 1234\") or facts (the fact sentences)", choices=GIST_FORMS)
    gist_digit_weight: float = option(1.0, "--gist-weight: weight of gist tokens holding a digit (a fact's value, "
                                      "the part a recall answer needs and the last a writer learns to copy)")
    stream: bool = option(False, "recall only: a newly generated document for every training example, never "
                          "repeated (needs --steps); held out: the first --val-size items of the validation split")
    questions_per_document: int = option(1, "--stream: consecutive examples asking about one document's facts "
                                         "(1: its needle only); a --batch-size of the same number gives each step "
                                         "one document")
    fit_documents: int | None = option(None, "--stream: cycle over the first N documents of recall's train split "
                                       "instead of new ones: a check that the memory can carry these documents at "
                                       "all (evaluate with --split train --limit N)", metavar="N")
    memory: MemoryConfig | None = option(None, "The memory and its insertion policy. Defaults are the method's own: "
                                         "MemGen uses the delimiter trigger, budget 3, gap 1.")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.memory is None:
            object.__setattr__(self, "memory", default_config(self.method))
        if self.lr is None:
            object.__setattr__(self, "lr", SOFTPROMPT_LR if self.method == "softprompt" else MEMORY_LR)
        check([
            (self.memory.method == self.method, f"memory method {self.memory.method!r} is not --method {self.method!r}"),
            (self.steps is None or self.epochs is None, "--steps and --epochs exclude each other"),
            (self.steps is None or self.steps >= 1, f"--steps must be >= 1, got {self.steps}"),
            (self.epochs is None or self.epochs > 0, f"--epochs must be > 0, got {self.epochs}"),
            (min(self.batch_size, self.max_length, self.self_samples, self.self_batch_size) >= 1,
             "--batch-size, --max-length, --self-samples and --self-batch-size must be >= 1"),
            (self.lr > 0, f"--lr must be > 0, got {self.lr}"),
            (self.grad_clip > 0, f"--grad-clip must be > 0, got {self.grad_clip}"),
            (0 <= self.warmup < 1, f"--warmup must be in [0, 1), got {self.warmup}"),
            (self.minutes is None or self.minutes > 0, f"--minutes must be > 0, got {self.minutes}"),
            (self.stop_at is None or self.stop_at >= 1, f"--stop-at must be >= 1, got {self.stop_at}"),
            (self.self_temperature >= 0, f"--self-temperature must be >= 0, got {self.self_temperature}"),
            (min(self.eval_every, self.val_size, self.save_every) >= 0,
             "--eval-every, --val-size and --save-every must be >= 0"),
            (min(self.sft_weight, self.kl_weight, self.recon_weight, self.gist_weight) >= 0
             and self.sft_weight + self.kl_weight + self.recon_weight + self.gist_weight > 0,
             "--sft-weight, --kl-weight, --recon-weight and --gist-weight must be >= 0, one of them > 0"),
            (self.gist_weight == 0 or (self.stream and self.method == "flashmem"
                                       and self.memory.readout == "soft-token"),
             "--gist-weight needs --stream (recall documents know their gist), --method flashmem and "
             "--readout soft-token (latents that name tokens)"),
            (self.recon_weight == 0 or self.memory.prompt_window > 0,
             "--recon-weight needs --prompt-window N: the reconstruction is of what the cut evicted"),
            (self.recon_tokens >= 1 and self.recon_digit_weight > 0 and self.gist_digit_weight > 0,
             "--recon-tokens must be >= 1, --recon-digit-weight and --gist-digit-weight > 0"),
            (not self.stream or (is_recall_spec(self.data.strip().lower()) and self.steps is not None),
             "--stream needs --data recall[:...] and --steps (the stream has no epochs)"),
            (self.fit_documents is None or (self.stream and self.fit_documents >= 1),
             f"--fit-documents needs --stream and N >= 1, got {self.fit_documents}"),
            (self.questions_per_document >= 1, f"--questions-per-document must be >= 1, got {self.questions_per_document}"),
        ], "training config")

    @staticmethod
    def nested_defaults(values: dict) -> dict:
        """The memory config a run of these values starts from (the method's own), for the command line."""
        return {"memory": default_config(values.get("method", "flashmem"))}

    @property
    def objective(self) -> Objective:
        return Objective(self.sft_weight, self.kl_weight, self.recon_weight, self.recon_tokens, self.recon_digit_weight,
                         self.gist_weight, self.gist_digit_weight)


def train(cfg: TrainConfig) -> int:
    """Train a memory as cfg says; 0 when done or stopped at --minutes, 130 when interrupted."""
    acc = make_accelerator()
    ckpt = open_checkpoint(cfg)
    train_ex, val_ex, source = load_data(cfg)  # before the model: bad data fails fast
    seed_everything(cfg.seed)
    bb = load_backbone(cfg.model, dtype=cfg.dtype, device=acc.device if cfg.device == "auto" else cfg.device)
    policy = resumed_policy(ckpt, bb) if ckpt is not None else cfg.memory
    # The memory's own weights and optimiser state are float32 whatever the backbone's dtype (autocast
    # runs the bf16 parts; see Trainer.autocast).
    memory = build_memory(bb, policy, dtype=torch.float32)
    policy = memory.config
    if cfg.targets == "self":
        with acc.main_process_first():  # the others then read the finished cache
            train_ex = self_targets(bb, train_ex, cfg)
            # Held out the same way: the held-out questions' own correct solutions. Their references would
            # score drift from the dataset's style, and a learning-rate sweep would pick the rate that moves least.
            val_ex = self_targets(bb, val_ex, cfg, required=False) if val_ex else []
    system = system_prompt(cfg.prompt)
    train_seqs = LazySequences(bb.tokenizer, train_ex, cfg.max_length, source, system, cfg.questions_per_document) \
        if cfg.stream else \
        encode_examples(bb.tokenizer, train_ex, cfg.max_length, cfg.on_bad_data, source, system)
    val_seqs = encode_examples(bb.tokenizer, val_ex, cfg.max_length, "skip", source, system) if val_ex else []
    trainer = Trainer(bb, memory, policy, train_seqs, val_seqs, cfg, acc, total_steps(cfg, len(train_seqs)))
    if ckpt is not None:
        trainer.restore(ckpt)
    elif needs_threshold(policy):
        trainer.policy = replace(policy, threshold=initial_threshold(bb, memory, policy, train_seqs, trainer, acc))
    status = trainer.fit()
    if acc.num_processes > 1:  # leave the process group cleanly, or its teardown may abort the process
        acc.wait_for_everyone()
        torch.distributed.destroy_process_group()
    return status


def make_accelerator():
    from datetime import timedelta

    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    # Without cpu=True accelerate leaves processes started by torchrun on a GPU-less machine
    # undistributed; with it they join one gloo group. Self-target generation runs on the main
    # process while the others wait at a barrier, hence the long timeout.
    return Accelerator(cpu=not torch.cuda.is_available(),
                       kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(hours=12))])


def resume_differences(saved: dict, cfg: TrainConfig) -> list[str]:
    """Fields of this run's config that differ from the checkpoint's (other than FREE_ON_RESUME).

    A field the checkpoint lacks was added to flashmem after it was written; that run behaved as the
    field's default does, so the default stands in for it.
    """
    now, before = _flat(asdict(cfg)), {**_field_defaults(), **_flat(saved)}
    keys = sorted((set(now) | set(_flat(saved))) - FREE_ON_RESUME)
    return [f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in keys if before.get(k) != now.get(k)]


def _field_defaults() -> dict:
    """Flat defaults of TrainConfig's fields and its memory's (as `memory.NAME`), where a field has one."""
    out = {}
    for cls, prefix in ((TrainConfig, ""), (MemoryConfig, "memory.")):
        for f in fields(cls):
            if f.default is not MISSING:
                out[prefix + f.name] = f.default
    return out


def _flat(values: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in values.items():
        if isinstance(value, dict) and key == "memory":
            out.update(_flat(value, f"{key}."))
        else:
            out[prefix + key] = value
    return out


def open_checkpoint(cfg: TrainConfig) -> Checkpoint | None:
    if not cfg.resume:
        if find_checkpoint(cfg.out) is not None:
            raise FlashmemError(f"{cfg.out} already holds a training checkpoint: pass --resume to continue it, "
                                "or choose another --out")
        return None
    ckpt = load_checkpoint(cfg.out)
    diffs = resume_differences(ckpt.state.get("train_config", {}), cfg)
    if diffs:
        raise FlashmemError(f"--resume: the settings differ from the checkpoint's run ({'; '.join(diffs)}); "
                            "pass the same ones")
    return ckpt


def resumed_policy(ckpt: Checkpoint, bb) -> MemoryConfig:
    """The memory config the checkpointed run trained with (its threshold included)."""
    policy = MemoryConfig(**ckpt.state["memory_config"])
    problem = identity_mismatch(policy.backbone, bb)
    if problem:
        raise FlashmemError(f"--resume: the checkpoint was made for another backbone: {problem}")
    return policy


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_data(cfg: TrainConfig):
    """(train examples, validation examples, label of the source) from the training split, or, with --stream,
    from an endless stream of new recall documents and the validation split."""
    if cfg.stream:
        stream = RecallStream(parse_spec(cfg.data.strip().lower()), cfg.questions_per_document, cfg.fit_documents,
                              gist=cfg.gist if cfg.gist_weight > 0 else None)
        val_ex = load_examples(cfg.data, "validation", limit=cfg.val_size)[0] if cfg.val_size > 0 else []
        return stream, val_ex, stream.label
    examples, report = load_examples(cfg.data, "train", cfg.data_dir, cfg.question_field, cfg.answer_field,
                                     cfg.limit, cfg.on_bad_data)
    if report.skipped:
        print(f"data: {report.summary()}", file=sys.stderr)
    if cfg.targets == "memgen":
        examples = [memgen_target(ex) for ex in examples]
    train_ex, val_ex = split_validation(examples, cfg.val_size, cfg.seed) if cfg.val_size > 0 else (examples, [])
    return train_ex, val_ex, report.path


def self_target_settings(cfg: TrainConfig) -> SelfTargetSettings:
    return SelfTargetSettings(samples=cfg.self_samples, max_new_tokens=cfg.self_max_new_tokens, seed=cfg.seed,
                              batch_size=cfg.self_batch_size, temperature=cfg.self_temperature,
                              system=system_prompt(cfg.prompt), reuse=cfg.self_reuse)


def self_targets(bb, examples, cfg: TrainConfig, required: bool = True):
    kept = build_self_targets(bb, examples, cfg.self_targets_file or cfg.out, self_target_settings(cfg))
    if not kept and required:
        raise FlashmemError("--targets self: the backbone solved none of the training questions; "
                            "use --targets reference or more --self-samples")
    return kept


def total_steps(cfg: TrainConfig, n_train: int) -> int:
    if cfg.steps is not None:
        return cfg.steps
    return max(1, math.ceil((cfg.epochs or 1.0) * n_train / cfg.batch_size))


def initial_threshold(bb, memory, policy: MemoryConfig, train_seqs: list[Sequence], trainer: Trainer, acc) -> float:
    """tau from the untrained system's entropies (broadcast, so every process fires identically)."""
    from accelerate.utils import broadcast_object_list

    tau = sequence_threshold(bb, memory, train_seqs[:THRESHOLD_EXAMPLES], policy, trainer.autocast())
    tau = broadcast_object_list([tau])[0] if acc.num_processes > 1 else tau
    if acc.is_main_process:
        print(f"threshold: {tau:.4f} ({policy.percentile:g}th percentile of the untrained system's answer "
              f"entropies over {min(THRESHOLD_EXAMPLES, len(train_seqs))} training examples; "
              "recalibrate with `flashmem calibrate`)", file=sys.stderr)
    return tau
