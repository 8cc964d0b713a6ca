"""`flashmem train`: supervised training of the latent memory through the frozen backbone.

Loss = summed answer NLL over the examples of an optimiser step / their answer tokens, computed by
sequence.training_nll (memory where inference would put it). AdamW on the memory's parameters only,
linear warm-up then cosine decay, gradient clipping, optional bf16 autocast. One example per
micro-batch (insertion points differ per sequence), `--batch-size` of them per step by gradient
accumulation. Under `accelerate launch` each process takes a strided share of every step's
examples and the gradients are summed across processes; only the main process writes.
The loop itself is trainer.py; this file turns arguments into its inputs.
"""
from __future__ import annotations

import argparse
import math
import random
import sys
from pathlib import Path

import numpy as np
import torch

from .backbone import Backbone
from .batching import encode_examples
from .calibrate import threshold_from_sequences
from .checkpoint import Checkpoint, find_checkpoint, load_checkpoint
from .config import METHODS, MemoryConfig
from .data import ON_ERROR, load_examples, split_validation
from .errors import FlashmemError
from .memory import build_memory, identity_mismatch

THRESHOLD_EXAMPLES = 32  # training sequences whose entropies set tau before any calibration
# Arguments that may differ on --resume because they do not change what is computed.
FREE_ON_RESUME = {"resume", "minutes", "save_every", "eval_every", "out", "func", "command"}


def register(sub) -> None:
    from .cli import add_model_argument

    p = sub.add_parser("train", help="train the latent memory (backbone frozen)",
                       description="Train FlashMem's consolidator (or a baseline memory) on question/answer data: "
                       "cross-entropy on the answer tokens, gradients through the frozen backbone.")
    add_model_argument(p)
    p.add_argument("--data", required=True, help="gsm8k, math500, mawps, a .jsonl file or a hub dataset")
    p.add_argument("--out", required=True, help="output folder: memory, checkpoint/, log.jsonl")
    p.add_argument("--method", default="flashmem", choices=METHODS, help="memory to train (default flashmem)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, help="optimiser steps")
    length.add_argument("--epochs", type=float, help="passes over the training data (default 1)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")
    p.add_argument("--targets", default="reference", choices=("reference", "self"),
                   help="answers to learn: the dataset's, or the backbone's own correct samples")
    p.add_argument("--self-samples", type=int, default=4, help="--targets self: samples per question")
    p.add_argument("--self-max-new-tokens", type=int, default=256, help="--targets self: tokens per sample")
    p.add_argument("--lr", type=float, default=3e-4, help="peak learning rate (default 3e-4)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (default 0)")
    p.add_argument("--batch-size", type=int, default=4, help="examples per optimiser step (default 4)")
    p.add_argument("--grad-clip", type=float, default=0.53, help="gradient norm clip (default 0.53, the paper's)")
    p.add_argument("--warmup", type=float, default=0.05, help="warm-up fraction of the steps (default 0.05)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (weights and optimiser stay float32)")
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation, data order and split")
    p.add_argument("--max-length", type=int, default=512, help="longest prompt+answer in tokens (default 512)")
    p.add_argument("--on-bad-data", default="stop", choices=ON_ERROR,
                   help="bad rows and over-long sequences: stop with file and line, or skip them (listed)")
    p.add_argument("--data-dir", help="folder of named datasets (default $FLASHMEM_DATA_DIR or ../shared/data)")
    p.add_argument("--question-field", help="JSONL question field (default: guessed)")
    p.add_argument("--answer-field", help="JSONL answer field (default: guessed)")
    p.add_argument("--limit", type=int, help="read at most N examples")
    p.add_argument("--eval-every", type=int, default=50, help="held-out loss every N steps (0: never)")
    p.add_argument("--val-size", type=int, default=64, help="held-out examples taken from the training data (0: none)")
    p.add_argument("--save-every", type=int, default=50, help="checkpoint every N steps (0: only at the end)")
    p.add_argument("--minutes", type=float, help="stop and save cleanly after M minutes of training")
    p.add_argument("--percentile", type=float, default=85.0, help="entropy percentile for tau (default 85)")
    p.add_argument("--threshold", type=float, help="monitor threshold tau (default: from the percentile)")
    p.add_argument("--num-latents", type=int, default=8, help="K latents per consolidation (default 8)")
    p.add_argument("--num-layers", type=int, default=1, help="consolidator layers (default 1)")
    p.add_argument("--budget", type=int, default=MemoryConfig.budget, help="triggered consolidations per answer")
    p.add_argument("--min-gap", type=int, default=MemoryConfig.min_gap, help="fewest answer tokens between two")
    p.add_argument("--n-sinks", type=int, default=MemoryConfig.n_sinks, help="attention-sink positions")
    p.add_argument("--no-trigger-memory", action="store_true", help="memory at the prompt end only")
    p.set_defaults(func=run)


def check_args(args: argparse.Namespace) -> None:
    positive = {"batch_size": args.batch_size, "max_length": args.max_length, "self_samples": args.self_samples}
    if args.steps is not None:
        positive["steps"] = args.steps
    for name, value in positive.items():
        if value < 1:
            raise FlashmemError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    checks = [
        (args.epochs is None or args.epochs > 0, f"--epochs must be > 0, got {args.epochs}"),
        (args.lr > 0, f"--lr must be > 0, got {args.lr}"),
        (args.grad_clip > 0, f"--grad-clip must be > 0, got {args.grad_clip}"),
        (0 <= args.warmup < 1, f"--warmup must be in [0, 1), got {args.warmup}"),
        (args.minutes is None or args.minutes > 0, f"--minutes must be > 0, got {args.minutes}"),
        (min(args.eval_every, args.val_size, args.save_every) >= 0, "--eval-every, --val-size, --save-every must be >= 0"),
    ]
    for ok, message in checks:
        if not ok:
            raise FlashmemError(message)


def memory_config(args: argparse.Namespace) -> MemoryConfig:
    return MemoryConfig(
        method=args.method, num_latents=args.num_latents, num_layers=args.num_layers, n_sinks=args.n_sinks,
        threshold=args.threshold, percentile=args.percentile, budget=args.budget, min_gap=args.min_gap,
        trigger_memory=not args.no_trigger_memory,
        # MemGen inserts after delimiter tokens; FlashMem and the soft prompt follow the monitor.
        trigger="delimiter" if args.method == "memgen" else "monitor",
    )


def resume_differences(saved: dict, args: argparse.Namespace) -> list[str]:
    """Arguments of this run that differ from the checkpoint's run (other than FREE_ON_RESUME)."""
    now = {k: v for k, v in vars(args).items() if k not in FREE_ON_RESUME}
    keys = sorted(set(now) | {k for k in saved if k not in FREE_ON_RESUME})
    return [f"--{k.replace('_', '-')} {saved.get(k)!r} -> {now.get(k)!r}" for k in keys if saved.get(k) != now.get(k)]


def open_checkpoint(args: argparse.Namespace) -> Checkpoint | None:
    out = Path(args.out)
    if not args.resume:
        if find_checkpoint(out) is not None:
            raise FlashmemError(f"{out} already holds a training checkpoint: pass --resume to continue it, "
                                "or choose another --out")
        return None
    ckpt = load_checkpoint(out)
    diffs = resume_differences(ckpt.state["args"], args)
    if diffs:
        raise FlashmemError(f"--resume: arguments differ from the checkpoint's run ({'; '.join(diffs)}); "
                            "pass the same ones")
    return ckpt


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_data(args: argparse.Namespace):
    """(train examples, validation examples, label of the source) from the training split."""
    examples, report = load_examples(args.data, "train", args.data_dir, args.question_field, args.answer_field,
                                     args.limit, args.on_bad_data)
    if report.skipped:
        print(f"data: {report.summary()}", file=sys.stderr)
    if args.val_size > 0:
        train, val = split_validation(examples, args.val_size, args.seed)
    else:
        train, val = examples, []
    return train, val, report.path


def total_steps(args: argparse.Namespace, n_train: int) -> int:
    if args.steps is not None:
        return args.steps
    return max(1, math.ceil((args.epochs or 1.0) * n_train / args.batch_size))


def make_accelerator():
    from datetime import timedelta

    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    # Without cpu=True accelerate leaves processes started by torchrun on a GPU-less machine
    # undistributed; with it they join one gloo group. Self-target generation runs on the main
    # process while the others wait at a barrier, hence the long timeout.
    return Accelerator(cpu=not torch.cuda.is_available(),
                       kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(hours=12))])


def run(args: argparse.Namespace) -> int:
    from .models import load_backbone
    from .trainer import Trainer

    check_args(args)
    acc = make_accelerator()
    ckpt = open_checkpoint(args)
    train_ex, val_ex, source = load_data(args)  # before the model: bad data fails fast
    seed_everything(args.seed)
    model, tokenizer = load_backbone(args.model, dtype=args.dtype)
    bb = Backbone(model.to(acc.device), tokenizer, name=args.model)
    if ckpt is not None:
        config = MemoryConfig(**ckpt.state["config"])
        problem = identity_mismatch(config.backbone, bb)
        if problem:
            raise FlashmemError(f"--resume: the checkpoint was made for another backbone: {problem}")
    else:
        config = memory_config(args)
    memory = build_memory(bb, config)
    if args.targets == "self":
        from .targets import SelfTargetSettings, build_self_targets

        settings = SelfTargetSettings(samples=args.self_samples, max_new_tokens=args.self_max_new_tokens, seed=args.seed)
        with acc.main_process_first():  # the others then read the finished cache
            train_ex = build_self_targets(bb, train_ex, args.out, settings)
        if not train_ex:
            raise FlashmemError("--targets self: the backbone solved none of the training questions; "
                                "use --targets reference or more --self-samples")
    train_seqs = encode_examples(tokenizer, train_ex, args.max_length, args.on_bad_data, source)
    val_seqs = encode_examples(tokenizer, val_ex, args.max_length, "skip", source) if val_ex else []
    trainer = Trainer(bb, memory, train_seqs, val_seqs, args, acc, total_steps(args, len(train_seqs)))
    if ckpt is not None:
        trainer.restore(ckpt)
    elif config.threshold is None and config.trigger == "monitor":
        config.threshold = initial_threshold(bb, memory, train_seqs, trainer.autocast, acc)
    status = trainer.fit()
    if acc.num_processes > 1:  # leave the gloo group cleanly, or its teardown may abort the process
        acc.wait_for_everyone()
        torch.distributed.destroy_process_group()
    return status


def initial_threshold(bb: Backbone, memory, train_seqs, autocast, acc) -> float:
    """tau from the untrained system's entropies (broadcast, so every process fires identically)."""
    from accelerate.utils import broadcast_object_list

    tau = threshold_from_sequences(bb, memory, train_seqs[:THRESHOLD_EXAMPLES], memory.config.percentile, autocast())
    tau = broadcast_object_list([tau])[0] if acc.num_processes > 1 else tau
    if acc.is_main_process:
        print(f"threshold: {tau:.4f} ({memory.config.percentile:g}th percentile of the untrained system's answer "
              f"entropies over {min(THRESHOLD_EXAMPLES, len(train_seqs))} training examples; "
              "recalibrate with `flashmem calibrate`)", file=sys.stderr)
    return tau

