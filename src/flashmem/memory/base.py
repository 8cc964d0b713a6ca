"""What every latent memory is: a module that turns the decoding state into K latent vectors.

Only the interface lives here: the context a memory may read (`MemoryContext`) and the base class
(`LatentMemory`) with the shared learned anchor. The methods are in consolidator.py, softprompt.py
and memgen.py; registry.py maps names to them and reads and writes memory folders.
"""
from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..config import MemoryConfig
from ..models.backbone import Backbone


@dataclass
class MemoryContext:
    """The decoding state a memory may read when it is asked for latents."""

    backbone: Backbone
    cache: object  # the live cache; read-only here
    mask: torch.Tensor  # (B, T) 1 for real cache slots
    positions: torch.Tensor  # (B,) position the first latent will take
    hidden: torch.Tensor  # (B, d) last-layer hidden state (after the final norm) of the newest token
    ids: torch.Tensor  # (B, T_ids) token ids so far, left-padded (MemGen's weaver re-reads them)
    ids_mask: torch.Tensor  # (B, T_ids)
    rows: torch.Tensor | None = None  # (B,) the cache's batch rows this context covers; None: all
    index: torch.Tensor | None = None  # (B,) consolidations each row already had (0: this is its first)

    def cache_kv(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values (B, n_kv, T, D) of one cached layer, for this context's rows only."""
        keys, values = self.backbone.cache_kv(self.cache, layer, self.mask.shape[1])
        return (keys, values) if self.rows is None else (keys[self.rows], values[self.rows])

    def select(self, rows: torch.Tensor) -> MemoryContext:
        """The same state for the batch rows `rows` (R,) only; id columns padded in all of them are dropped."""
        ids_mask = self.ids_mask[rows]
        first = int(ids_mask.any(0).long().argmax())  # ids are left-padded: leading columns only
        cache_rows = rows if self.rows is None else self.rows[rows]
        return MemoryContext(self.backbone, self.cache, self.mask[rows], self.positions[rows], self.hidden[rows],
                             self.ids[rows, first:], ids_mask[:, first:], cache_rows,
                             None if self.index is None else self.index[rows])


class LatentMemory(nn.Module):
    """Base class: subclasses define forward(ctx) -> (B, K, d) latents on the embedding scale.

    Every memory's latents are emit(delta) = anchor + delta, put on the embedding scale: `anchor`
    is K learned vectors that start as the newline embedding, and each method's delta (zero at
    initialisation) is what it computes from the context. The untrained memory is thus harmless,
    and the soft-prompt control (delta = 0) is exactly the context-free part of the others.
    Measured on SmolLM2-135M (24 GSM8K train answers, K=8 at the prompt end): eight newlines leave
    the answer NLL where it was (1.412 vs 1.421 without memory), while an untrained consolidator's
    output costs +0.18 nats/token and eight spread-out vocabulary rows +0.47.
    """

    method: ClassVar[str]  # the registry name
    defaults: ClassVar[dict] = {}  # MemoryConfig fields that make the method's own insertion policy
    reads_context: ClassVar[bool] = True  # False: the latents cannot depend on the context
    # True: forward reads only the cache, mask, positions and hidden state (never the token ids) with
    # fixed shapes, so a compiled decoding loop can run it inside a graph (decoding/compiled.py)
    traceable: ClassVar[bool] = True

    def __init__(self, backbone: Backbone, config: MemoryConfig):
        super().__init__()
        self.config = config
        # A list hides the backbone from nn.Module so its weights are never ours to save or train.
        self._backbone = [backbone]
        self.register_buffer("embed_scale", torch.tensor(backbone.embedding_norm()), persistent=False)
        self.anchor = nn.Parameter(backbone.text_embedding("\n").repeat(config.num_latents, 1))

    @property
    def backbone(self) -> Backbone:
        return self._backbone[0]

    def emit(self, delta: torch.Tensor | None, batch: int) -> torch.Tensor:
        """(B, K, d) latents: anchor + delta (delta (B, K, d) or None), on the embedding scale."""
        vectors = self.anchor.expand(batch, -1, -1) if delta is None else self.anchor.to(delta.dtype) + delta
        return self.to_embedding_scale(vectors)

    def to_embedding_scale(self, vectors: torch.Tensor) -> torch.Tensor:
        """Put latents on the norm of real token embeddings so the frozen model sees familiar inputs."""
        norm = vectors.float().norm(dim=-1, keepdim=True).clamp_min(1e-6)
        return (vectors.float() / norm * self.embed_scale).to(vectors.dtype)

    @property
    def writes_backbone(self) -> bool:
        """Whether writer() adapts the backbone (then the latents are forwarded apart from other tokens)."""
        return False

    def writer(self) -> AbstractContextManager:
        """Context in which this memory's latents are written into the cache (forwarded through the
        backbone); the default writes them as any input is written."""
        return nullcontext()

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().contiguous() for k, v in self.named_parameters() if v.requires_grad}

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
