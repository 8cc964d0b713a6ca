"""Shared-KV Consolidator: FlashMem's only trained part.

A copy of the backbone's last decoder layer whose attention has no key/value projections of its
own: its queries read the backbone's frozen cache of that layer directly. A seed MLP turns the last
hidden state into the first input; the layer then runs K steps autoregressively (its output is its
next input), each step emitting one latent. Earlier latents are visible to later steps through
keys/values made by the source layer's frozen projections, so nothing learns K/V and the history is
never re-encoded. The layer copy and its step are backbone operations (backbone.py); this file is
the attention over [cache | latents] and the loop.
"""
from __future__ import annotations

import torch
from torch import nn

from ..config import MemoryConfig
from ..models.backbone import WRITE_TARGETS, Backbone
from .base import LatentMemory, MemoryContext
from .lora import adapter_parameters, lora_wrappers


class SeedMLP(nn.Module):
    """m0 = h + MLP(h); the zero-initialised output keeps the untrained seed equal to h."""

    def __init__(self, d: int):
        super().__init__()
        self.up = nn.Linear(d, d)
        self.act = nn.SiLU()
        self.down = nn.Linear(d, d)
        nn.init.zeros_(self.down.weight)
        nn.init.zeros_(self.down.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.down(self.act(self.up(h)))


def shared_kv_attention(
    query: torch.Tensor, cache_keys: torch.Tensor, cache_values: torch.Tensor, visible: torch.Tensor,
    latent_keys: torch.Tensor, latent_values: torch.Tensor, scaling: float,
) -> torch.Tensor:
    """One query step over [frozen cache | latents so far], GQA without repeating the cache.

    query (B, H, 1, D); cache_* (B, n_kv, T, D); visible (B, T) bool; latent_* (B, n_kv, i, D).
    Returns (B, 1, H*D).
    """
    b, h, _, d = query.shape
    n_kv = cache_keys.shape[1]
    folded = query.reshape(b, n_kv, h // n_kv, d)  # (B, n_kv, G, D)
    s_cache = torch.matmul(folded, cache_keys.transpose(-1, -2))  # (B, n_kv, G, T)
    s_cache = s_cache.masked_fill(~visible[:, None, None, :], float("-inf"))
    s_latent = torch.matmul(folded, latent_keys.transpose(-1, -2))  # (B, n_kv, G, i)
    probs = torch.softmax(torch.cat([s_cache, s_latent], -1).float() * scaling, dim=-1).to(query.dtype)
    t = cache_keys.shape[2]
    out = torch.matmul(probs[..., :t], cache_values) + torch.matmul(probs[..., t:], latent_values)
    return out.reshape(b, 1, h * d)  # head order kv*G + g matches the backbone's repeat_kv


class Consolidator(LatentMemory):
    method = "flashmem"

    def __init__(self, backbone: Backbone, config: MemoryConfig):
        super().__init__(backbone, config)
        d = backbone.hidden_size
        self.sources = list(range(backbone.n_layers - config.num_layers, backbone.n_layers))
        self.seed = SeedMLP(d)
        self.layers = nn.ModuleList(backbone.shared_kv_copy(i) for i in self.sources)
        self.out_norm = backbone.final_norm_copy()
        # Zero-initialised: the untrained latents are the memory's harmless anchor (see memory.py).
        self.out_proj = nn.Linear(d, d, bias=False)
        nn.init.zeros_(self.out_proj.weight)
        # flashmem's extension (write_lora_r > 0): the latents' keys and values at every layer come through
        # a LoRA of the frozen projections, on only while they are written (writer()). PEFT's B starts at
        # zero, so the untrained writer writes what the plain backbone would.
        if config.step_queries:  # zero: the untrained consolidator is the paper's
            self.step_inputs = nn.Parameter(torch.zeros(config.num_latents, d))
        self._writers = lora_wrappers(backbone, config.write_lora_r, 2 * config.write_lora_r, WRITE_TARGETS) \
            if config.write_lora_r > 0 else {}
        if self._writers:
            self.write_lora = adapter_parameters(self._writers)

    @property
    def writes_backbone(self) -> bool:
        return bool(self._writers)

    def writer(self):
        return self.backbone.patched(self._writers) if self._writers else super().writer()

    def forward(self, ctx: MemoryContext) -> torch.Tensor:
        return self.latents_and_logits(ctx)[0]

    def latents_and_logits(self, ctx: MemoryContext) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, K, d) latents and, with the soft-token readout, (B, K, V) the frozen head's logits whose
        distribution each latent is the expected embedding of (what the gist objective trains); else None."""
        bb = self.backbone
        visible = ctx.mask.bool()
        cache = [ctx.cache_kv(i) for i in self.sources]
        latent_kv: list[tuple[list, list]] = [([], []) for _ in self.layers]
        x = self.seed(ctx.hidden.to(self.out_proj.weight.dtype)).unsqueeze(1)  # (B, 1, d)
        latents, logits = [], []
        for step in range(self.config.num_latents):
            if self.config.step_queries:
                x = x + self.step_inputs[step].to(x.dtype)
            cos, sin = bb.rotary(x, (ctx.positions + step).unsqueeze(1))  # the latents' own positions
            for layer, src, (keys, values), (lat_k, lat_v) in zip(self.layers, self.sources, cache, latent_kv):
                query, k, v = bb.latent_qkv(layer, src, x, cos, sin)  # trained W_Q; the source's frozen W_K, W_V
                lat_k.append(k)
                lat_v.append(v)
                attended = shared_kv_attention(query, keys, values, visible, torch.cat(lat_k, 2),
                                               torch.cat(lat_v, 2), bb.scaling)
                x = bb.finish_layer(layer, x, attended)
            latent, named = self._read_out(x)
            latents.append(latent)
            logits.append(named)
        if self.config.readout == "soft-token":  # the anchor would blur the token each latent names
            return self.to_embedding_scale(torch.cat(latents, dim=1)), torch.cat(logits, dim=1)
        return self.emit(torch.cat(latents, dim=1), x.shape[0]), None  # (B, K, d)

    def read_out(self, x: torch.Tensor) -> torch.Tensor:
        """One latent from the layer's output x (B, 1, d): the learned projection, plus with the soft-token
        readout the expected embedding under the frozen LM head. The layer is a copy of the last one, whose
        output the LM head already reads as a next-token distribution, so copying a token seen in the cache
        (an induction head's work) is the untrained layer's habit rather than a map to learn from scratch."""
        return self._read_out(x)[0]

    def _read_out(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """read_out's latent and, with the soft-token readout, the head's logits it was made from."""
        normed = self.out_norm(x)
        latent = self.out_proj(normed)
        if self.config.readout != "soft-token":
            return latent, None
        bb = self.backbone
        logits = bb.logits(normed)
        probs = torch.softmax(logits.float(), dim=-1).to(normed.dtype)
        return latent + probs @ bb.embedding_matrix(), logits
