"""The training loop: accumulate one example at a time, sum gradients across processes, clip, step.

Stops cleanly (checkpoint and memory saved) at the last step, at --minutes or --stop-at, and on SIGINT/SIGTERM;
the stop request is summed across processes with the gradients, so every process stops after the
same step. A second Ctrl-C aborts at once.
"""
from __future__ import annotations

import json
import math
import signal
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..config import MemoryConfig
from ..errors import FlashmemError
from ..files import atomic_write_text
from ..memory.base import LatentMemory
from ..memory.registry import load_trained_state, save_memory
from ..models.backbone import Backbone
from .batching import DataStream, Sequence, shard
from .checkpoint import Checkpoint, rng_state, save_checkpoint, set_rng_state
from .objectives import sequence_loss
from .scoring import find_insertions

TRAIN_CONFIG = "train_config.json"  # the TrainConfig a memory was trained with, saved beside it

LOG = "log.jsonl"
INTERRUPTED = 130


@dataclass
class StepResult:
    loss: float
    grad_norm: float
    tokens: int  # prompt + answer tokens of the step's examples (all processes)
    answer_tokens: int
    insertions: float  # triggered consolidations per example
    stop: bool
    kl: float = 0.0  # mean KL to the full-view teacher per answer token (--kl-weight)
    recon: float = 0.0  # weighted reconstruction NLL per weighted token (--recon-weight)
    gist: float = 0.0  # weighted gist cross-entropy per unit of weight (--gist-weight, --gist-digit-weight)
    gist_hits: float = 0.0  # fraction of named latents whose most likely token is the gist's


def _number(value) -> float:
    """A loss part as a float for the log (a tensor is detached first)."""
    return float(value.detach()) if torch.is_tensor(value) else float(value)


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up to 1, then cosine decay to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def check_frozen(bb: Backbone, params: list[torch.nn.Parameter]) -> None:
    """The backbone is frozen and none of its tensors may reach the optimiser (an error, not an assert:
    `python -O` strips asserts)."""
    backbone_ids = bb.parameter_ids()
    if not bb.frozen() or any(id(p) in backbone_ids for p in params):
        raise FlashmemError("the backbone must stay frozen: a backbone parameter requires grad or is being trained")


class Trainer:
    """One training run: the memory, its insertion policy (`policy`, threshold included), the data and
    the optimiser. `cfg` is the run's TrainConfig (train.py)."""

    def __init__(self, bb: Backbone, memory: LatentMemory, policy: MemoryConfig, train: list[Sequence],
                 val: list[Sequence], cfg, acc, total_steps: int):
        self.bb, self.memory, self.policy, self.train, self.val, self.cfg, self.acc = \
            bb, memory, policy, train, val, cfg, acc
        self.out = Path(cfg.out)
        self.total = total_steps
        self.params = [p for p in memory.parameters() if p.requires_grad]
        check_frozen(bb, self.params)
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        warmup = math.ceil(cfg.warmup * total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, total_steps, warmup))
        self.stream = DataStream(len(train), cfg.seed, shuffle=not cfg.stream)
        self.objective = cfg.objective
        self.step, self.elapsed_before, self.tokens_before = 0, 0.0, 0
        self.stop_signal: str | None = None

    # ---- small helpers --------------------------------------------------------------------------
    def autocast(self):
        """bf16 autocast when asked for, or whenever the backbone itself is not float32 (the GPU default):
        the memory's weights and AdamW state stay float32 either way."""
        if not self.cfg.bf16 and self.bb.dtype == torch.float32:
            return nullcontext()
        return torch.autocast(self.bb.device.type, dtype=torch.bfloat16 if self.cfg.bf16 else self.bb.dtype)

    @property
    def main(self) -> bool:
        return self.acc.is_main_process

    def _sum_across(self, values: torch.Tensor) -> torch.Tensor:
        if self.acc.num_processes > 1:
            torch.distributed.all_reduce(values)
        return values

    # ---- one optimiser step ---------------------------------------------------------------------
    def train_step(self, deadline: float | None) -> StepResult:
        batch = [self.train[i] for i in self.stream.take(self.cfg.batch_size)]
        answer_tokens = sum(int(s.answer.numel()) for s in batch)
        self.optimizer.zero_grad(set_to_none=False)
        sums = torch.zeros(9, dtype=torch.float64)  # nll, kl, recon, recon weight, insertions, gist, its weight, named, hits
        rebuilt = max(sum(s.reconstruct for s in batch), 1)  # sequences that reconstruct their document
        for seq in shard(batch, self.acc.process_index, self.acc.num_processes):
            with self.autocast():
                part = sequence_loss(self.bb, self.memory, seq.prompt.to(self.bb.device), seq.answer.to(self.bb.device),
                                     self.policy, self.objective, seq.reconstruct, seq.gist)
            loss = self.step_loss(part, answer_tokens, rebuilt)
            if torch.is_tensor(loss) and loss.requires_grad:  # else (a gist-only step's repeat of a document) nothing to learn
                loss.backward()
            sums += torch.tensor([_number(part.nll), _number(part.kl), _number(part.recon), part.recon_weight,
                                  part.insertions, _number(part.gist), part.gist_weight, part.gist_tokens,
                                  part.gist_hits],
                                 dtype=torch.float64)
        stop = (self.stop_signal is not None or (deadline is not None and time.monotonic() > deadline)
                or (self.cfg.stop_at is not None and self.step + 1 >= self.cfg.stop_at))
        self._reduce_grads()
        totals = torch.cat([sums, torch.tensor([float(stop)], dtype=torch.float64)]).to(self.bb.device)
        nll, kl, recon, recon_weight, insertions, gist, gist_weight, named, hits, stop = \
            self._sum_across(totals).tolist()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return StepResult(nll / answer_tokens, float(grad_norm), sum(s.n_tokens for s in batch), answer_tokens,
                          insertions / len(batch), stop > 0, kl / answer_tokens, recon / max(recon_weight, 1e-9),
                          gist / max(gist_weight, 1e-9), hits / max(named, 1.0))

    def step_loss(self, part, answer_tokens: int, rebuilt: int) -> torch.Tensor:
        """One sequence's share of the step's loss. Answer terms are divided by the whole step's answer tokens
        and the document's own terms (reconstruction, gist) by the number of sequences that score a document,
        so summing over examples and processes gives the means."""
        o = self.objective
        loss = (o.sft * part.nll + o.kl * part.kl) / answer_tokens
        if o.recon > 0 and part.recon_weight > 0:
            loss = loss + o.recon * part.recon / part.recon_weight / rebuilt
        if o.gist > 0 and part.gist_weight > 0:
            loss = loss + o.gist * part.gist / part.gist_weight / rebuilt
        return loss

    def _reduce_grads(self) -> None:
        """Sum the gradients over processes: one all-reduce of them all, not one per tensor."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        flat = self._sum_across(torch.cat([g.reshape(-1).float() for g in grads]))
        offset = 0
        for p, g in zip(self.params, grads):
            p.grad = flat[offset: offset + g.numel()].view_as(p).to(p.dtype)
            offset += g.numel()

    def validation_record(self) -> dict:
        """The held-out loss for the log, with what it scored (--targets: references or own solutions)."""
        return {"val_loss": self.validation_loss(), "val_targets": self.cfg.targets}

    @torch.no_grad()
    def validation_loss(self) -> float:
        """Mean answer NLL per token on the held-out split (memory placed by the trigger, no grad)."""
        nll, tokens = 0.0, 0
        for seq in shard(self.val, self.acc.process_index, self.acc.num_processes):
            with self.autocast():
                scored = find_insertions(self.bb, self.memory, seq.prompt.to(self.bb.device), seq.answer.to(self.bb.device),
                                         policy=self.policy)
            nll, tokens = nll + float(scored.nll), tokens + scored.n_tokens
        # On the model's device: the collective backend (NCCL on GPUs) reduces only device tensors.
        totals = torch.tensor([nll, float(tokens)], dtype=torch.float64, device=self.bb.device)
        nll, tokens = self._sum_across(totals).tolist()
        return nll / max(tokens, 1.0)

    # ---- checkpoints, logs ----------------------------------------------------------------------
    def state(self, elapsed: float, tokens: int) -> dict:
        return {"step": self.step, "total_steps": self.total, "scheduler": self.scheduler.state_dict(),
                "data": self.stream.state(), "rng": rng_state(), "memory_config": asdict(self.policy),
                "train_config": asdict(self.cfg), "elapsed": elapsed, "tokens": tokens,
                "world_size": self.acc.num_processes}

    def save(self, elapsed: float, tokens: int) -> None:
        if self.main:
            save_checkpoint(self.out, self.memory.trainable_state(), self.optimizer.state_dict(), self.state(elapsed, tokens))

    def restore(self, ckpt: Checkpoint) -> None:
        load_trained_state(self.memory, ckpt.weights, f"checkpoint {ckpt.path}/memory.safetensors")
        try:
            self.optimizer.load_state_dict(ckpt.optimizer)
            self.scheduler.load_state_dict(ckpt.state["scheduler"])
            self.stream.restore(ckpt.state["data"])
        except (KeyError, ValueError) as err:
            raise FlashmemError(f"checkpoint {ckpt.path} does not fit this run: {err}") from None
        set_rng_state(ckpt.state["rng"])
        self.step = int(ckpt.state["step"])
        self.elapsed_before, self.tokens_before = float(ckpt.state["elapsed"]), int(ckpt.state["tokens"])
        if self.main:
            self._truncate_log()
            print(f"resumed from {ckpt.path} at step {self.step}", file=sys.stderr)

    def _truncate_log(self) -> None:
        """Drop log lines of steps after the checkpoint: those steps will be run again."""
        path = self.out / LOG
        if not path.is_file():
            return
        kept = []
        for line in path.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= self.step:
                    kept.append(line)
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line from the crash
        atomic_write_text(path, "".join(f"{line}\n" for line in kept))

    def log(self, record: dict) -> None:
        if self.main:
            with (self.out / LOG).open("a") as handle:
                handle.write(json.dumps(record) + "\n")

    # ---- signals --------------------------------------------------------------------------------
    def _on_signal(self, signum, frame) -> None:
        if self.stop_signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now, keep the last checkpoint
        self.stop_signal = signal.Signals(signum).name
        try:
            print(f"\n{self.stop_signal}: finishing this step, then saving (Ctrl-C again to abort)", file=sys.stderr)
        except OSError:
            pass  # stderr went away with whoever sent the signal; saving matters more

    def _install_handlers(self) -> dict:
        if threading.current_thread() is not threading.main_thread():
            return {}  # Python delivers signals to the main thread only; a caller's thread keeps its own
        return {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}

    # ---- the loop -------------------------------------------------------------------------------
    def fit(self) -> int:
        from tqdm import tqdm

        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            if self.step == 0:
                atomic_write_text(self.out / LOG, "")
        previous = self._install_handlers()
        start = time.monotonic()
        deadline = start + 60 * self.cfg.minutes if self.cfg.minutes else None
        tokens, result = 0, None
        bar = tqdm(total=self.total, initial=self.step, desc="train", unit="step", file=sys.stderr,
                   disable=not self.main, dynamic_ncols=True)
        try:
            if self.step == 0:
                start_record = {"step": 0, "threshold": self.policy.threshold}
                if self.val and self.cfg.eval_every:
                    start_record.update(self.validation_record())
                self.log(start_record)
            while self.step < min(self.total, self.cfg.stop_at or self.total):
                t0 = time.monotonic()
                lr = self.scheduler.get_last_lr()[0]
                result = self.train_step(deadline)
                tokens += result.tokens
                elapsed = time.monotonic() - start
                record = self.step_record(result, lr, time.monotonic() - t0, self.elapsed_before + elapsed)
                # Every eval_every steps, and at the end (last step or --minutes, not a signal: that must be quick).
                last = self.step == self.total or (result.stop and self.stop_signal is None)
                if self.val and self.cfg.eval_every and (self.step % self.cfg.eval_every == 0 or last):
                    record.update(self.validation_record())
                self.log(record)
                shown = result.loss if self.objective.scores_answer else result.gist
                bar.set_postfix(loss=f"{shown:.3f}", tok_s=f"{tokens / max(elapsed, 1e-9):.0f}",
                                **({"val": f"{record['val_loss']:.3f}"} if "val_loss" in record else {}))
                bar.update(1)
                if result.stop:
                    break
                if self.cfg.save_every and self.step % self.cfg.save_every == 0 and self.step < self.total:
                    self.save(self.elapsed_before + elapsed, self.tokens_before + tokens)
        finally:
            bar.close()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        elapsed = time.monotonic() - start
        self.save(self.elapsed_before + elapsed, self.tokens_before + tokens)
        self._save_outputs()
        return self._summary(result, tokens, elapsed)

    def step_record(self, result: StepResult, lr: float, seconds: float, elapsed: float) -> dict:
        """One step's line in the log (the objective's other parts when they are on)."""
        record = {"step": self.step, "loss": result.loss if self.objective.scores_answer else None, "lr": lr, "grad_norm": result.grad_norm,
                  "tokens": result.tokens, "answer_tokens": result.answer_tokens,
                  "tokens_per_s": result.tokens / max(seconds, 1e-9), "insertions": result.insertions,
                  "elapsed": elapsed}
        if self.objective.kl > 0:
            record["kl"] = result.kl
        if self.objective.recon > 0:
            record["recon"] = result.recon
        if self.objective.gist > 0:
            record.update(gist=result.gist, gist_hits=result.gist_hits)
        return record

    def _save_outputs(self) -> None:
        """The memory, and the run's settings beside it (the checkpoint folder is not meant to be shared)."""
        if self.main:
            save_memory(self.memory, self.out, self.policy)
            atomic_write_text(self.out / TRAIN_CONFIG, json.dumps(asdict(self.cfg), indent=2) + "\n")

    def _summary(self, result: StepResult | None, tokens: int, elapsed: float) -> int:
        why = (f"stopped by {self.stop_signal}" if self.stop_signal else
               "done" if self.step >= self.total else
               "stopped at --stop-at" if self.cfg.stop_at and self.step >= self.cfg.stop_at else
               "stopped at --minutes" if result is not None and result.stop else "done")
        if self.main:
            loss = "n/a" if result is None else f"loss {result.loss:.4f}" if self.objective.scores_answer \
                else f"gist cross-entropy {result.gist:.4f}"
            print(f"{why}: step {self.step}/{self.total}, last {loss}, {tokens} tokens in {elapsed:.0f} s "
                  f"({tokens / max(elapsed, 1e-9):.0f} tokens/s), threshold {self.policy.threshold}; "
                  f"memory saved to {self.out} (checkpoint in {self.out / 'checkpoint'})", file=sys.stderr)
        return INTERRUPTED if self.stop_signal else 0
