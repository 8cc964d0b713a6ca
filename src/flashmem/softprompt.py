"""Static soft-prompt control: K learned constant vectors, no dependence on the context.

Inserted by exactly the same policy as FlashMem's latents and trained by the same trainer, it
answers whether reading the cache matters or any learned prefix would do as well.
"""
from __future__ import annotations

import torch
from torch import nn

from .backbone import Backbone
from .config import MemoryConfig
from .memory import LatentMemory, MemoryContext


class SoftPrompt(LatentMemory):
    def __init__(self, backbone: Backbone, config: MemoryConfig):
        super().__init__(backbone, config)
        # Start from real token embeddings (fixed rows, deterministic) so the untrained prefix is text-like.
        table = backbone.decoder.embed_tokens.weight.detach()
        rows = torch.linspace(0, table.shape[0] - 1, config.num_latents).long()
        self.vectors = nn.Parameter(table[rows].clone().float())

    def forward(self, ctx: MemoryContext) -> torch.Tensor:
        batch = ctx.hidden.shape[0]
        return self.to_embedding_scale(self.vectors.to(ctx.hidden.dtype)).unsqueeze(0).expand(batch, -1, -1)
