"""The decoding state and its steps: prefill, forward a chunk, monitor, consolidate and inject.

generation.py (free decoding) and sequence.py (teacher-forced training and scoring) are both built
from these steps, so the memory a model is trained with is the memory it decodes with.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .backbone import Backbone, StepOutput
from .memory import LatentMemory, MemoryContext
from .monitor import attention_entropy, sink_mask


@dataclass
class DecodeState:
    """Everything that grows while a batch decodes."""

    cache: object
    mask: torch.Tensor  # (B, T) 1 for real cache slots (padding and skipped latent slots are 0)
    positions: torch.Tensor  # (B,) position of the next real slot
    sinks: torch.Tensor  # (B, T) the first n_sinks real prompt positions
    ids: torch.Tensor  # (B, T_ids) token ids so far (prompt and generated), left-padded
    ids_mask: torch.Tensor  # (B, T_ids)
    hidden: torch.Tensor  # (B, d) hidden state of each row's newest token
    logits: torch.Tensor  # (B, V) logits for each row's next token
    inputs: list[torch.Tensor] | None = None  # every embedding fed, kept only for MemGen's re-prefill

    @property
    def length(self) -> int:
        return self.mask.shape[1]


def prefill(
    bb: Backbone, ids: torch.Tensor, mask: torch.Tensor, n_sinks: int, want_query: bool = False,
    keep_inputs: bool = False,
):
    """Encode left-padded prompts. Returns the state and the step output (query for every position)."""
    mask = mask.long()
    # Same position rule as transformers' generate for left padding.
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    cache = bb.new_cache()
    embeds = bb.embed(ids)
    out = bb.forward(embeds, cache, positions, mask, want_query=want_query)
    state = DecodeState(
        cache=cache,
        mask=mask,
        positions=mask.sum(-1),
        sinks=sink_mask(mask, n_sinks),
        ids=ids,
        ids_mask=mask,
        hidden=out.hidden[:, -1],
        logits=out.logits[:, -1],
        inputs=[embeds] if keep_inputs else None,
    )
    return state, out


def forward_chunk(
    bb: Backbone, state: DecodeState, embeds: torch.Tensor, real: torch.Tensor,
    want_query: bool = False, all_logits: bool = False,
) -> StepOutput:
    """Append embeds (B, Q, d) to the cache. Rows where real is False get masked slots (no position used)."""
    b, q, _ = embeds.shape
    new_mask = real.long()[:, None].expand(b, q)
    positions = state.positions[:, None] + torch.arange(q, device=embeds.device)[None, :]
    state.mask = torch.cat([state.mask, new_mask], dim=1)
    state.sinks = torch.cat([state.sinks, torch.zeros_like(new_mask, dtype=torch.bool)], dim=1)
    out = bb.forward(embeds, state.cache, positions, state.mask, want_query=want_query, all_logits=all_logits)
    state.positions = state.positions + q * real.long()
    if state.inputs is not None:
        state.inputs.append(embeds)
    return out


def append_tokens(state: DecodeState, tokens: torch.Tensor) -> None:
    """Record tokens (B, Q) in the id history MemGen's weaver re-reads."""
    state.ids = torch.cat([state.ids, tokens], dim=1)
    state.ids_mask = torch.cat([state.ids_mask, torch.ones_like(tokens)], dim=1)


def chunk_entropy(bb: Backbone, state: DecodeState, query: torch.Tensor) -> torch.Tensor:
    """Monitor entropy (B, Q) of the last Q appended slots, each seeing the cache up to itself."""
    keys, _ = bb.cache_kv(state.cache, bb.n_layers - 1)
    q, t = query.shape[2], state.length
    slots = torch.arange(t, device=keys.device)
    causal = slots[None, :] <= (t - q + torch.arange(q, device=keys.device))[:, None]  # (Q, T)
    visible = state.mask.bool()[:, None, :] & causal[None]
    return attention_entropy(query, keys, visible, state.sinks, bb.scaling)


def consolidate(
    bb: Backbone, memory: LatentMemory, state: DecodeState, rows: torch.Tensor, keep_latents: bool = False
) -> torch.Tensor | None:
    """Make latents from the current state and inject them for `rows`; the next logits follow them."""
    ctx = MemoryContext(bb, state.cache, state.mask, state.positions, state.hidden, state.ids, state.ids_mask)
    if bool(rows.all()):
        latents = memory(ctx)  # (B, K, d)
    else:
        # Only the rows that fire pay for a memory (MemGen re-encodes a row's whole context); the
        # others get masked slots, so the zeros standing in for their latents are never seen.
        index = rows.nonzero().squeeze(-1)
        picked = memory(ctx.select(index))
        latents = picked.new_zeros(rows.shape[0], *picked.shape[1:]).index_copy(0, index, picked)
    out = forward_chunk(bb, state, latents, rows)
    pick = rows[:, None]
    state.logits = torch.where(pick, out.logits[:, -1], state.logits)
    state.hidden = torch.where(pick, out.hidden[:, -1], state.hidden)
    return latents if keep_latents else None


def room_for(bb: Backbone, state: DecodeState, extra: int) -> bool:
    """Whether every row can still take `extra` positions within the model's context."""
    return int(state.positions.max()) + extra <= bb.max_positions


def drop_last(bb: Backbone, state: DecodeState, n: int) -> None:
    """Forget the last n slots (all real, batch of one): the teacher-forced path looked ahead past a trigger."""
    if n <= 0:
        return
    bb.crop(state.cache, state.length - n)
    state.mask, state.sinks = state.mask[:, :-n], state.sinks[:, :-n]
    state.ids, state.ids_mask = state.ids[:, :-n], state.ids_mask[:, :-n]
    state.positions = state.positions - n
    if state.inputs is not None:
        state.inputs = [torch.cat(state.inputs, 1)[:, :-n]]


def rebuild_cache(bb: Backbone, state: DecodeState, rows: torch.Tensor) -> None:
    """MemGen's re-prefill: throw the cache away and re-encode every input so far (same numbers, its cost)."""
    from .memgen import reprefill

    inputs = torch.cat(state.inputs, 1)
    state.inputs = [inputs]
    state.cache, out = reprefill(bb, inputs, state.mask)
    pick = rows[:, None]
    state.logits = torch.where(pick, out.logits[:, -1], state.logits)
    state.hidden = torch.where(pick, out.hidden[:, -1], state.hidden)
