"""MemGen's memory weaver, the heavy baseline FlashMem is measured against (arXiv 2509.24704).

The weaver is the frozen backbone itself plus a LoRA adapter (PEFT; r 16, alpha 32 on the query and
value projections). K learned query vectors are appended after the whole token context; the weaver
encodes [context, queries] in one forward with a fresh cache, and its last-layer states (after the
final norm) at the query positions, through a learned projection, are the K latents. As in MemGen,
the whole context is re-encoded at every insertion: that cost is what the benchmark measures.

The base weights are shared, never copied, and the backbone is never changed for good: the LoRA
wrappers are swapped into the live model only while weaving (`Backbone.patched`, restored on every
exit path). Only the adapter, the queries, the projection and the shared anchor train and are saved.
MemGen inserts after the prompt and after tokens ending in ',', '.' or a newline, within a budget:
`MEMGEN_DEFAULTS` is that policy; its cache re-prefill is the engine's `reprefill` step.
"""
from __future__ import annotations

import torch
from torch import nn

from ..config import MemoryConfig
from ..models.backbone import LORA_TARGETS, Backbone
from .base import LatentMemory, MemoryContext
from .lora import adapter_parameters, lora_wrappers

# MemGen's released settings. Budget 3 is the low end of MemGen's 3-5: delimiters come every few
# tokens, so a budget is always used up early and each insertion re-encodes the whole context; 3
# stays within MemGen's range while closest to FlashMem's default of 2, so a comparison measures
# what a memory holds more than how many it gets. min_gap 1 is "no gap" (MemGen has none).
MEMGEN_DEFAULTS = dict(trigger="delimiter", budget=3, min_gap=1, prompt_memory=True, trigger_memory=True,
                       num_latents=8, lora_r=16, lora_alpha=32, reprefill=False)


def left_padded_positions(mask: torch.Tensor) -> torch.Tensor:
    """(B, T) 0/1 slot mask -> positions counting real slots only (padding gets a dummy 1, as prefill does)."""
    mask = mask.long()
    return (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)


class MemGenWeaver(LatentMemory):
    """The backbone plus a LoRA adapter that is on only inside forward(); K queries; a projection."""

    method = "memgen"
    defaults = MEMGEN_DEFAULTS
    traceable = False  # it re-reads the token ids, whose length grows every step

    def __init__(self, backbone: Backbone, config: MemoryConfig):
        super().__init__(backbone, config)
        d = backbone.hidden_size
        # A plain dict, so the shared base weights never become parameters of this module.
        self._wrappers = lora_wrappers(backbone, config.lora_r, config.lora_alpha, LORA_TARGETS)
        # Only the adapter matrices are registered here: they are what trains, saves and loads.
        self.lora = adapter_parameters(self._wrappers)
        # Queries start on the embedding scale in random directions, so the untrained weaver reads
        # them like ordinary (if unfamiliar) tokens.
        self.queries = nn.Parameter(torch.randn(config.num_latents, d) / d ** 0.5 * backbone.embedding_norm())
        # Zero-initialised like FlashMem's output projection: both start from the same harmless anchor.
        self.proj = nn.Linear(d, d, bias=False)
        nn.init.zeros_(self.proj.weight)

    def adapter_on(self):
        """Context manager: the LoRA wrappers in the live model for the duration of a weave."""
        return self.backbone.patched(self._wrappers)

    def forward(self, ctx: MemoryContext) -> torch.Tensor:
        """Re-encode the whole token context plus the K queries; return (B, K, d) latents."""
        bb = self.backbone
        b, k = ctx.ids.shape[0], self.config.num_latents
        real = ctx.ids_mask.long()
        mask = torch.cat([real, real.new_ones(b, k)], dim=1)  # (B, T_ids + K)
        # Left padding: the queries continue each row's own positions right after its last token.
        positions = left_padded_positions(mask)
        queries = self.queries.to(bb.dtype)[None].expand(b, -1, -1)  # (B, K, d)
        embeds = torch.cat([bb.embed(ctx.ids), queries], dim=1)  # (B, T_ids + K, d)
        with self.adapter_on():
            # A fresh cache each time: MemGen's weaver keeps nothing between insertions.
            out = bb.forward(embeds, bb.new_cache(), positions, mask)
        return self.emit(self.proj(out.hidden[:, -k:]), b)  # (B, K, d)
