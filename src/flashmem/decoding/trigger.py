"""When memory is made during decoding: the trigger rule, in one place for generation and scoring.

A consolidation follows answer step s (0-based) of a row when the signal is up there (the monitor's
entropy above tau, or, for MemGen's rule, token s ends with ',', '.' or a newline), the row has
consolidations left in its budget, and at least `min_gap` steps passed since its last one (the
prompt-end memory counts as step -1). Free decoding asks one step at a time for a batch; the
teacher-forced path asks for the first firing index in a chunk of one sequence. Both read the same
signal and the same per-row counts, which stay on the device (no host round trip per row).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import MemoryConfig
from ..errors import FlashmemError
from ..models.backbone import Backbone
from .delimiters import delimiter_token_mask


def missing_threshold_error() -> FlashmemError:
    return FlashmemError("the memory has no monitor threshold: run `flashmem calibrate` on it, "
                         "or give one (threshold in its config, --threshold)")


@dataclass
class Trigger:
    """The signal, threshold, budget and gap of one batch, with per-row consolidation counts."""

    kind: str | None  # "monitor", "delimiter", "always" (budget and gap alone decide), or None (never fires)
    threshold: float | None
    budget: int
    min_gap: int
    delimiters: torch.Tensor | None  # (V,) bool: token ids that end with a delimiter
    fired: torch.Tensor  # (B,) consolidations made so far per row
    last: torch.Tensor  # (B,) answer step of each row's last consolidation; -1 is the prompt end

    @classmethod
    def build(cls, bb: Backbone, policy: MemoryConfig | None, batch: int, device) -> "Trigger":
        """The trigger of `policy` (None, or no memory during decoding: one that never fires)."""
        active = policy is not None and policy.trigger_memory and policy.budget > 0
        kind = policy.trigger if active else None
        if kind == "monitor" and policy.threshold is None:
            raise missing_threshold_error()
        delimiters = delimiter_token_mask(bb.tokenizer, bb.vocab_size).to(device) if kind == "delimiter" else None
        return cls(kind, policy.threshold if policy else None, policy.budget if policy else 0,
                   policy.min_gap if policy else 1, delimiters,
                   torch.zeros(batch, dtype=torch.long, device=device),
                   torch.full((batch,), -1, dtype=torch.long, device=device))

    @property
    def needs_entropy(self) -> bool:
        return self.kind == "monitor"

    def signal(self, entropy: torch.Tensor | None, tokens: torch.Tensor) -> torch.Tensor:
        """(B, Q) bool: where the raw signal is up, for entropy (B, Q) and tokens (B, Q)."""
        if self.kind == "monitor":
            return entropy > self.threshold
        if self.kind == "delimiter":
            return self.delimiters[tokens]
        return torch.full_like(tokens, self.kind == "always", dtype=torch.bool)

    def allowed(self, steps: torch.Tensor | int) -> torch.Tensor:
        """(B, Q) bool: budget and gap allow a consolidation after answer steps (Q,) (or one step, an int)."""
        room = (self.fired < self.budget)[:, None]
        ahead = (steps - self.last[:, None]) if isinstance(steps, int) else (steps[None, :] - self.last[:, None])
        return room & (ahead >= self.min_gap)

    def fire_rows(self, entropy: torch.Tensor | None, tokens: torch.Tensor, step: int,
                  active: torch.Tensor) -> torch.Tensor:
        """(B,) bool: rows whose trigger fires after answer step `step`; entropy, tokens (B,); active (B,).

        The step stays a Python number: a tensor made from it would be a host-to-device copy, which
        on a GPU waits for all queued work, every step."""
        up = self.signal(None if entropy is None else entropy[:, None], tokens[:, None])
        return (up & self.allowed(step))[:, 0] & active

    def first_fire(self, entropy: torch.Tensor | None, tokens: torch.Tensor, start: int) -> int | None:
        """Batch of one: the first index i of a chunk (answer steps start + i) where it fires, or None.

        entropy, tokens (Q,). Nothing changes the counts before the first firing, so testing every
        index against the current counts gives the same answer as stepping through the chunk.
        """
        steps = start + torch.arange(tokens.shape[0], device=tokens.device)
        up = self.signal(None if entropy is None else entropy[None], tokens[None])
        hits = (up & self.allowed(steps))[0].nonzero()
        return int(hits[0]) if hits.numel() else None

    def select(self, rows: torch.Tensor) -> None:
        """Keep the counts of the batch rows `rows` (R,) only (finished rows leave a compacted batch)."""
        self.fired, self.last = self.fired[rows], self.last[rows]

    def record(self, rows: torch.Tensor, step: int) -> None:
        """Count a consolidation after answer step `step` for rows (B,) bool."""
        self.fired = self.fired + rows.long()
        self.last = torch.where(rows, torch.full_like(self.last, step), self.last)
