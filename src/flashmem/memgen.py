"""MemGen's memory weaver, the heavy baseline FlashMem is measured against (arXiv 2509.24704).

The weaver is the frozen backbone itself plus a LoRA adapter (PEFT; r 16, alpha 32 on q_proj and
v_proj). K learned query vectors are appended after the whole token context; the weaver encodes
[context, queries] in one forward with a fresh cache, and its last-layer states (after the final
norm) at the query positions, through a learned projection, are the K latents. As in MemGen, the
whole context is re-encoded at every insertion: that cost is what the benchmark measures.

The base weights are shared, never copied, and the backbone is never changed for good: the LoRA
wrappers live here and are swapped into the attention modules only while weaving, and swapped out
on every exit path. Outside a weave the reasoner is exactly the frozen backbone (same modules, same
parameters, same outputs). Only the adapter, the queries, the projection and the
shared anchor (memory.py) train and are saved.

MemGen inserts after the prompt and after tokens ending in ',', '.' or a newline, within a budget:
`memgen_config()` gives that policy; `reprefill()` is MemGen's rebuild of the reasoner's cache.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace

import torch
from peft import LoraConfig, inject_adapter_in_model
from torch import nn

from .backbone import Backbone, StepOutput
from .config import MemoryConfig
from .memory import LatentMemory, MemoryContext

TARGETS = ("q_proj", "v_proj")

# MemGen's released settings as a MemoryConfig. Budget 3 is the low end of MemGen's 3-5: delimiters
# come every few tokens, so a budget is always used up early and each insertion re-encodes the whole
# context; 3 stays within MemGen's range while closest to FlashMem's default of 2, so a comparison
# measures what a memory holds more than how many it gets. min_gap 1 is "no gap" (MemGen has none).
MEMGEN_DEFAULTS = dict(
    method="memgen", trigger="delimiter", budget=3, min_gap=1, prompt_memory=True, trigger_memory=True,
    num_latents=8, lora_r=16, lora_alpha=32, reprefill=False,
)


def memgen_config(**overrides) -> MemoryConfig:
    """A MemoryConfig with MemGen's insertion policy; overrides replace any field (and are validated)."""
    return replace(MemoryConfig(**MEMGEN_DEFAULTS), **overrides)


def left_padded_positions(mask: torch.Tensor) -> torch.Tensor:
    """(B, T) 0/1 slot mask -> positions counting real slots only (padding gets a dummy 1, as prefill does)."""
    mask = mask.long()
    return (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)


def lora_wrappers(backbone: Backbone, config: MemoryConfig) -> dict[str, dict[str, nn.Module]]:
    """PEFT LoRA layers around the backbone's own q_proj/v_proj modules, without touching the backbone.

    PEFT injects into a throwaway ModuleDict that merely references the attention projections, so
    the wrappers wrap the shared base Linear modules while the backbone's module tree stays as it was.
    """
    holder = nn.ModuleDict({
        str(i): nn.ModuleDict({name: getattr(backbone.layer(i).self_attn, name) for name in TARGETS})
        for i in range(backbone.n_layers)
    })
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=0.0, target_modules=list(TARGETS))
    inject_adapter_in_model(lora, holder)
    return {i: dict(site) for i, site in holder.items()}


class MemGenWeaver(LatentMemory):
    """The backbone plus a LoRA adapter that is on only inside forward(); K queries; a projection."""

    def __init__(self, backbone: Backbone, config: MemoryConfig):
        super().__init__(backbone, config)
        d = backbone.hidden_size
        wrappers = lora_wrappers(backbone, config)
        # (attention module, attribute, LoRA wrapper, original Linear): what a weave swaps in and back.
        # A plain list, so the shared base weights never become parameters of this module.
        self._sites = [
            (backbone.layer(int(i)).self_attn, name, wrapper, wrapper.base_layer)
            for i, site in wrappers.items() for name, wrapper in site.items()
        ]
        # Only the adapter matrices are registered here: they are what trains, saves and loads.
        self.lora = nn.ModuleDict({
            i: nn.ModuleDict({
                name: nn.ModuleDict({"lora_A": w.lora_A, "lora_B": w.lora_B}) for name, w in site.items()
            })
            for i, site in wrappers.items()
        })
        # Queries start on the embedding scale in random directions, so the untrained weaver reads
        # them like ordinary (if unfamiliar) tokens.
        self.queries = nn.Parameter(torch.randn(config.num_latents, d) / d ** 0.5 * backbone.embedding_norm())
        # Zero-initialised like FlashMem's output projection: both start from the same harmless anchor.
        self.proj = nn.Linear(d, d, bias=False)
        nn.init.zeros_(self.proj.weight)

    @contextmanager
    def adapter_on(self):
        """Swap the LoRA wrappers into the backbone for the duration of a weave, then always back."""
        try:
            for attn, name, wrapper, _ in self._sites:
                setattr(attn, name, wrapper)
            yield
        finally:
            for attn, name, _, base in self._sites:
                setattr(attn, name, base)

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


def reprefill(bb: Backbone, inputs: torch.Tensor, mask: torch.Tensor) -> tuple[object, StepOutput]:
    """MemGen's re-prefill: rebuild the reasoner's cache from every input so far (tokens and latents).

    inputs (B, T, d) are the embeddings the reasoner was fed, in cache order (left padding and
    masked latent slots included); mask (B, T) marks real slots. Positions follow from the mask
    because every real slot took the next position. Returns the new cache and the step output,
    whose last logits/hidden replace the state's. Same numbers as the incremental cache; only the
    cost differs, which is the point of reproducing it.
    """
    cache = bb.new_cache()
    out = bb.forward(inputs, cache, left_padded_positions(mask), mask.long())
    return cache, out
