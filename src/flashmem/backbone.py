"""The frozen backbone: the one module that touches transformers' model, cache and attention internals.

Everything else in flashmem gets plain tensors from here: logits, hidden states, the last layer's
query, cached keys/values, rotary tables. A transformers upgrade breaks this file and its tests only.
Supported layout (Llama, Qwen2, Qwen3, Mistral): model.model.{embed_tokens, layers, norm, rotary_emb},
layers[i].self_attn.{q_proj, k_proj, v_proj, o_proj[, q_norm, k_norm]}, model.lm_head.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import DynamicCache


@dataclass
class StepOutput:
    """What one backbone forward returns to the engine."""

    logits: torch.Tensor  # (B, Q or 1, V)
    hidden: torch.Tensor  # (B, Q, d) last-layer hidden state after the final norm
    query: torch.Tensor | None  # (B, H, Q, D) last layer's query after RoPE, when asked for


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, heads, Q, D); cos/sin: (B, Q, D)."""
    return x * cos.unsqueeze(1) + rotate_half(x) * sin.unsqueeze(1)


class Backbone:
    """A frozen causal LM seen through the few operations FlashMem needs. Never changes the model."""

    def __init__(self, model: nn.Module, tokenizer=None, name: str = "model"):
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.decoder = model.model
        self.config = model.config
        attn = self.decoder.layers[-1].self_attn
        self.n_layers = len(self.decoder.layers)
        self.n_heads = self.config.num_attention_heads
        self.n_kv_heads = self.config.num_key_value_heads
        self.head_dim = attn.head_dim
        self.scaling = attn.scaling
        self.hidden_size = self.config.hidden_size
        self.max_positions = int(getattr(self.config, "max_position_embeddings", 1 << 30))

    @property
    def device(self) -> torch.device:
        return self.decoder.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder.embed_tokens.weight.dtype

    def layer(self, index: int) -> nn.Module:
        return self.decoder.layers[index]

    def final_norm(self) -> nn.Module:
        return self.decoder.norm

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.decoder.embed_tokens(ids)

    def embedding_norm(self) -> float:
        """Mean L2 norm of the token embeddings: the scale latents are put on."""
        return float(self.decoder.embed_tokens.weight.detach().float().norm(dim=-1).mean())

    def new_cache(self) -> DynamicCache:
        return DynamicCache(config=self.config)

    # ---- cache access -------------------------------------------------------------------------
    @staticmethod
    def cache_kv(cache: DynamicCache, layer_index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached keys/values of one layer, (B, n_kv, T, D), keys already rotated. No copy."""
        layer = cache.layers[layer_index]
        return layer.keys, layer.values

    @staticmethod
    def cache_length(cache: DynamicCache) -> int:
        return cache.get_seq_length()

    @staticmethod
    def crop(cache: DynamicCache, keep: int) -> None:
        """Keep the first `keep` positions of every layer."""
        drop = cache.get_seq_length() - keep
        if drop > 0:
            cache.crop(-drop)

    # ---- forward ------------------------------------------------------------------------------
    def forward(
        self,
        embeds: torch.Tensor,
        cache: DynamicCache,
        positions: torch.Tensor,
        mask: torch.Tensor,
        want_query: bool = False,
        all_logits: bool = False,
    ) -> StepOutput:
        """Run embeds (B, Q, d) at positions (B, Q) on top of the cache; mask (B, T_cache + Q) marks real slots.

        With want_query the last layer's query is captured by a pre-hook on its attention (the hook
        sees the normed input and the rotary tables that layer used) so the monitor needs no eager
        attention anywhere.
        """
        captured: dict = {}
        handle = None
        if want_query:
            handle = self.decoder.layers[-1].self_attn.register_forward_pre_hook(
                _capture_attention_input(captured), with_kwargs=True
            )
        try:
            out = self.decoder(
                inputs_embeds=embeds, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True
            )
        finally:
            if handle is not None:
                handle.remove()
        hidden = out.last_hidden_state
        logits = self.model.lm_head(hidden if all_logits else hidden[:, -1:])
        query = None
        if want_query:
            cos, sin = captured["position_embeddings"]
            query = self.project_query(self.decoder.layers[-1].self_attn, captured["hidden_states"], cos, sin)
        return StepOutput(logits=logits, hidden=hidden, query=query)

    # ---- one attention layer's projections (the consolidator and the monitor use these) --------
    def rotary(self, like: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin for positions (B, Q): (B, Q, D) in like's dtype."""
        return self.decoder.rotary_emb(like, position_ids=positions)

    def project_query(self, attn: nn.Module, normed: torch.Tensor, cos, sin) -> torch.Tensor:
        """(B, Q, d) normed input -> (B, H, Q, D) rotated query, as attn itself computes it."""
        b, q, _ = normed.shape
        query = attn.q_proj(normed).view(b, q, -1, self.head_dim)
        if getattr(attn, "q_norm", None) is not None:
            query = attn.q_norm(query)
        return apply_rope(query.transpose(1, 2), cos, sin)

    def project_kv(self, attn: nn.Module, normed: torch.Tensor, cos, sin) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, Q, d) normed input -> keys, values (B, n_kv, Q, D), keys rotated, as the cache holds them."""
        b, q, _ = normed.shape
        keys = attn.k_proj(normed).view(b, q, -1, self.head_dim)
        if getattr(attn, "k_norm", None) is not None:
            keys = attn.k_norm(keys)
        values = attn.v_proj(normed).view(b, q, -1, self.head_dim).transpose(1, 2)
        return apply_rope(keys.transpose(1, 2), cos, sin), values

    def frozen(self) -> bool:
        return not any(p.requires_grad for p in self.model.parameters())


def _capture_attention_input(store: dict):
    def hook(module, args, kwargs):
        store["hidden_states"] = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        store["position_embeddings"] = kwargs["position_embeddings"]
    return hook
