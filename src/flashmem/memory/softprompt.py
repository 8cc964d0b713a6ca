"""Static soft-prompt control: K learned constant vectors, no dependence on the context.

Inserted by exactly the same policy as FlashMem's latents and trained by the same trainer, it
answers whether reading the cache matters or any learned prefix would do as well.
"""
from __future__ import annotations

import torch

from .base import LatentMemory, MemoryContext


class SoftPrompt(LatentMemory):
    """The base class's learned anchor alone: delta is always zero."""

    method = "softprompt"
    reads_context = False

    def forward(self, ctx: MemoryContext) -> torch.Tensor:
        return self.emit(None, ctx.hidden.shape[0]).to(ctx.hidden.dtype)
