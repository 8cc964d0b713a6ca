"""The decoding core: the state that grows while a batch decodes, and its named steps.

prefill -> prompt_memory -> (decode_step -> maybe_consolidate)*, plus forward_chunk for the
teacher-forced path and reprefill, the cache rebuild MemGen's code does after an insertion.
generation.py (free decoding) and scoring.py (teacher-forced training and scoring) are two short
loops over these steps with one Trigger (trigger.py), so the memory a model is trained with is the
memory it decodes with. The state keeps each row's next position on the host as well, so checking
the context limit never waits for the device.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from ..config import MemoryConfig
from ..errors import FlashmemError
from ..memory.base import LatentMemory, MemoryContext
from ..models.backbone import Backbone, StepOutput
from .monitor import attention_entropy, sink_mask
from .trigger import Trigger


@dataclass
class DecodeState:
    """Everything that grows while a batch decodes."""

    cache: object
    mask: torch.Tensor  # (B, T) 1 for real cache slots (padding and skipped latent slots are 0)
    positions: torch.Tensor  # (B,) position of the next real slot
    next_positions: list[int]  # the same on the host, so the context limit is checked without a sync
    sinks: torch.Tensor  # (B, T) the first n_sinks real prompt positions
    ids: torch.Tensor  # (B, T_ids) token ids so far (prompt and generated), left-padded
    ids_mask: torch.Tensor  # (B, T_ids)
    hidden: torch.Tensor  # (B, d) hidden state of each row's newest token
    logits: torch.Tensor  # (B, V) logits for each row's next token
    made: torch.Tensor  # (B,) consolidations each row has had (the prompt-end one included)
    normalize_entropy: bool = False  # the monitor's signal divided by log n (MemoryConfig.entropy)
    inputs: list[torch.Tensor] | None = None  # every embedding fed, kept only for MemGen's re-prefill

    @property
    def length(self) -> int:
        return self.mask.shape[1]


class PrefillMemo:
    """The last few prompt prefills, by their token ids: runs that decode the same prompts one after
    another (`flashmem eval --also`) pay for each prompt's forward once. A hit hands out a copy of the
    cache, so each run's decoding grows its own."""

    def __init__(self, capacity: int):
        self.capacity, self.hits, self.misses = capacity, 0, 0
        self._entries: OrderedDict[tuple, tuple[object, StepOutput]] = OrderedDict()

    @staticmethod
    def key(bb: Backbone, ids: torch.Tensor, mask: torch.Tensor, want_query: bool) -> tuple:
        digest = hashlib.sha1(ids.cpu().numpy().tobytes())
        digest.update(mask.cpu().numpy().tobytes())
        return id(bb), tuple(ids.shape), want_query, digest.hexdigest()

    def get(self, key: tuple) -> tuple[object, StepOutput] | None:
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(key)
        return entry

    def put(self, key: tuple, entry: tuple[object, StepOutput]) -> None:
        self._entries[key] = entry
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)


_MEMO: PrefillMemo | None = None


@contextmanager
def shared_prefills(capacity: int) -> Iterator[PrefillMemo]:
    """Within the block, prefills without gradients reuse the forward of an identical recent prompt batch."""
    global _MEMO
    previous, _MEMO = _MEMO, PrefillMemo(capacity)
    try:
        yield _MEMO
    finally:
        _MEMO = previous


def prefill(bb: Backbone, ids: torch.Tensor, mask: torch.Tensor, n_sinks: int, want_query: bool = False,
            keep_inputs: bool = False, normalize_entropy: bool = False,
            max_len: int | None = None) -> tuple[DecodeState, StepOutput]:
    """Encode left-padded prompts. Returns the state and the step output (query for every position).
    max_len: preallocate the cache for that many slots (Backbone.new_cache) instead of growing it."""
    mask = mask.long()
    # Same position rule as transformers' generate for left padding.
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    embeds = bb.embed(ids)
    cache, out = _encode_prompt(bb, ids, embeds, positions, mask, want_query, max_len)
    lengths = mask.sum(-1)
    state = DecodeState(cache=cache, mask=mask, positions=lengths, next_positions=lengths.tolist(),
                        sinks=sink_mask(mask, n_sinks), ids=ids, ids_mask=mask, hidden=out.hidden[:, -1],
                        logits=out.logits[:, -1], made=torch.zeros_like(lengths),
                        normalize_entropy=normalize_entropy, inputs=[embeds] if keep_inputs else None)
    return state, out


def _encode_prompt(bb: Backbone, ids: torch.Tensor, embeds: torch.Tensor, positions: torch.Tensor,
                   mask: torch.Tensor, want_query: bool, max_len: int | None = None) -> tuple[object, StepOutput]:
    """The prompt's forward into a new cache, or a copy of a shared one (never while training or patched)."""
    memo = _MEMO if _MEMO is not None and bb.patch_depth == 0 and not torch.is_grad_enabled() else None
    key = memo.key(bb, ids, mask, want_query) + (max_len,) if memo is not None else None
    hit = memo.get(key) if memo is not None else None
    if hit is not None:
        return bb.clone_cache(hit[0]), hit[1]
    cache = bb.new_cache(max_len)
    out = bb.forward(embeds, cache, positions, mask, want_query=want_query)
    if bb.cache_length(cache) != ids.shape[1]:  # e.g. a transformers that ignores our cache argument
        raise FlashmemError(f"the backbone did not fill its cache ({bb.cache_length(cache)} of {ids.shape[1]} "
                            "positions): this transformers version is not supported (use >=5.24,<5.40)")
    if memo is not None:
        memo.put(key, (bb.clone_cache(cache), out))
    return cache, out


def forward_chunk(bb: Backbone, state: DecodeState, embeds: torch.Tensor, rows: list[bool],
                  want_query: bool = False, all_logits: bool = False, pick: torch.Tensor | None = None) -> StepOutput:
    """Append embeds (B, Q, d) to the cache. Rows where rows[r] is False get masked slots (no position used).

    pick: rows as a device tensor when the caller has one (each host-to-device copy waits for the GPU)."""
    b, q, _ = embeds.shape
    # All rows real (every decoding step) needs no host-to-device copy of the row flags.
    real = None if all(rows) else (pick if pick is not None else torch.tensor(rows, device=embeds.device)).long()
    new_mask = state.mask.new_ones(b, q) if real is None else real[:, None].expand(b, q)
    positions = state.positions[:, None] + torch.arange(q, device=embeds.device)[None, :]
    state.mask = torch.cat([state.mask, new_mask], dim=1)
    state.sinks = torch.cat([state.sinks, torch.zeros_like(new_mask, dtype=torch.bool)], dim=1)
    out = None
    if real is not None and any(rows) and not (want_query or all_logits):  # a consolidation for some rows: only they run
        index = torch.tensor([r for r, fire in enumerate(rows) if fire], device=embeds.device)
        out = bb.forward_rows(embeds, state.cache, positions, state.mask, index)
    if out is None:
        out = bb.forward(embeds, state.cache, positions, state.mask, want_query=want_query, all_logits=all_logits)
    state.positions = state.positions + (q if real is None else q * real)
    state.next_positions = [p + q * r for p, r in zip(state.next_positions, rows)]
    if state.inputs is not None:
        state.inputs.append(embeds)
    return out


def append_tokens(state: DecodeState, tokens: torch.Tensor) -> None:
    """Record tokens (B, Q) in the id history MemGen's weaver re-reads."""
    state.ids = torch.cat([state.ids, tokens], dim=1)
    state.ids_mask = torch.cat([state.ids_mask, torch.ones_like(tokens)], dim=1)


def chunk_entropy(bb: Backbone, state: DecodeState, query: torch.Tensor) -> torch.Tensor:
    """Monitor entropy (B, Q) of the last Q appended slots, each seeing the cache up to itself."""
    q, t = query.shape[2], state.length
    keys, _ = bb.cache_kv(state.cache, bb.n_layers - 1, t)
    slots = torch.arange(t, device=keys.device)
    causal = slots[None, :] <= (t - q + torch.arange(q, device=keys.device))[:, None]  # (Q, T)
    visible = state.mask.bool()[:, None, :] & causal[None]
    return attention_entropy(query, keys, visible, state.sinks, bb.scaling, state.normalize_entropy)


def decode_step(bb: Backbone, state: DecodeState, token: torch.Tensor, watch: bool) -> torch.Tensor | None:
    """Feed one token per row (B,); the state's logits/hidden follow it. Returns the monitor entropy (B,)."""
    append_tokens(state, token[:, None])
    out = forward_chunk(bb, state, bb.embed(token[:, None]), [True] * token.shape[0], want_query=watch)
    state.logits, state.hidden = out.logits[:, -1], out.hidden[:, -1]
    return chunk_entropy(bb, state, out.query)[:, 0] if watch else None


def consolidate(bb: Backbone, memory: LatentMemory, state: DecodeState, rows: list[bool],
                pick: torch.Tensor | None = None) -> torch.Tensor:
    """Make latents from the current state and inject them for `rows` (pick: the same on the device);
    the next logits follow them."""
    pick = pick if pick is not None else torch.tensor(rows, device=state.mask.device)
    ctx = memory_context(bb, state)
    if all(rows):
        latents = memory(ctx)  # (B, K, d)
    else:
        # Only the rows that fire pay for a memory (MemGen re-encodes a row's whole context); the
        # others get masked slots, so the zeros standing in for their latents are never seen.
        index = torch.tensor([r for r, fire in enumerate(rows) if fire], device=pick.device)
        picked = memory(ctx.select(index))
        latents = picked.new_zeros(len(rows), *picked.shape[1:]).index_copy(0, index, picked)
    with memory.writer():  # written as this memory writes (flashmem's write_lora_r: its adapter at every layer)
        out = forward_chunk(bb, state, latents, rows, pick=pick)
    _take_last(state, out, pick)
    state.made = state.made + pick.long()
    return latents


def memory_context(bb: Backbone, state: DecodeState) -> MemoryContext:
    """What a memory may read of the current state, every row."""
    return MemoryContext(bb, state.cache, state.mask, state.positions, state.hidden, state.ids, state.ids_mask,
                         index=state.made)


def prompt_memory(bb: Backbone, memory: LatentMemory | None, state: DecodeState, policy: MemoryConfig | None,
                  window: int = 0) -> torch.Tensor | None:
    """Memory at the end of every prompt, when the policy asks for it and the context has room.

    window > 0 (MemoryConfig.prompt_window) cuts the prompt from the cache once the memory is made:
    see cut_prompt. A query-agnostic policy makes that memory before the window is read (rewind).
    Without a memory (policy None) only the cut happens."""
    make = policy is not None and policy.prompt_memory and room_for(bb, state, policy.num_latents + window)
    if window <= 0:
        return consolidate(bb, memory, state, [True] * state.mask.shape[0]) if make else None
    agnostic = make and policy.query_agnostic
    _check_window(state, window, window + 1 if agnostic else window)
    tail = rewind(bb, state, window) if agnostic else state.ids[:, state.length - window:]
    latents = memory(memory_context(bb, state)) if make else None
    cut_prompt(bb, state, tail, latents, memory=memory if make else None)
    return latents


def rewind(bb: Backbone, state: DecodeState, n: int) -> torch.Tensor:
    """Step back to before the prompt's last n tokens (B, n), returned: the state is then the one a prefill
    of the rest alone gives (attention is causal), so a memory made now cannot depend on them."""
    tail, last = state.ids[:, -n:], state.ids[:, -n - 1:-n]
    drop_last(bb, state, n + 1)  # the last n columns are real in every row: prompts are left-padded
    append_tokens(state, last)  # read again for the hidden state and logits the memory starts from
    out = forward_chunk(bb, state, bb.embed(last), [True] * last.shape[0])
    state.logits, state.hidden = out.logits[:, -1], out.hidden[:, -1]
    return tail


def _check_window(state: DecodeState, window: int, need: int) -> None:
    """Every prompt has `need` tokens besides its sinks (the window, and one more to rewind to)."""
    shortest = int((state.mask.sum(-1) - state.sinks.sum(-1)).min())
    if shortest < need:
        raise FlashmemError(f"prompt window {window} needs prompts of more than {need} tokens besides the "
                            f"attention sinks; one prompt has {shortest}")


def cut_prompt(bb: Backbone, state: DecodeState, tail: torch.Tensor, latents: torch.Tensor | None,
               all_logits: bool = False, memory: LatentMemory | None = None) -> StepOutput:
    """Take the prompt out of reach: every prompt slot but the attention sinks is masked for all that
    follows (decoding, the monitor, later consolidations), then the latents (made from the prompt)
    and `tail` (B, N), the prompt's last tokens (the question, the chat turn), are forwarded after it
    as one chunk. Both are computed afresh on the cut cache: had they been cached while the prompt
    was visible, their keys and values would carry the prompt past the cut whatever the memory
    held. What the rest of the prompt held reaches the answer only through the latent vectors.
    Returns the chunk's output (all_logits: every slot's logits, for scoring what follows the memory).
    memory: the latents' memory; one whose writer adapts the backbone (LatentMemory.writes_backbone)
    has its latents forwarded alone under it, then the tail without it."""
    extra = tail.shape[1] + (0 if latents is None else latents.shape[1])
    if not room_for(bb, state, extra + 1):
        raise FlashmemError(f"prompt window {tail.shape[1]}: no room left in the model's context to re-read the "
                            "prompt's end")
    state.mask = state.mask.masked_fill(~state.sinks, 0)  # a new tensor: saved copies of the state keep theirs
    rows, made = [True] * tail.shape[0], latents is not None
    written = None
    if made and memory is not None and memory.writes_backbone:
        with memory.writer():
            written = forward_chunk(bb, state, latents, rows, all_logits=all_logits)
        latents = None
    append_tokens(state, tail)
    chunk = bb.embed(tail) if latents is None else torch.cat([latents, bb.embed(tail)], 1)
    out = forward_chunk(bb, state, chunk, rows, all_logits=all_logits)
    if written is not None and all_logits:  # the same slots as one chunk would give: latents, then tail
        out = StepOutput(logits=torch.cat([written.logits, out.logits], 1),
                         hidden=torch.cat([written.hidden, out.hidden], 1), query=None)
    state.logits, state.hidden = out.logits[:, -1], out.hidden[:, -1]
    if made:
        state.made = state.made + 1
    return out


def maybe_consolidate(bb: Backbone, memory: LatentMemory, state: DecodeState, trigger: Trigger,
                      policy: MemoryConfig, rows: list[bool], step: int,
                      inject: Callable = consolidate) -> torch.Tensor | None:
    """Consolidate for the rows the trigger picked after answer step `step`, if the context has room.
    inject: consolidate, or a compiled one with its arguments (CompiledStep.consolidate)."""
    if not any(rows) or not room_for(bb, state, policy.num_latents + 1):
        return None
    pick = torch.tensor(rows, device=state.mask.device)
    latents = inject(bb, memory, state, rows, pick)
    if policy.reprefill:  # MemGen's code re-encodes the reasoner's whole sequence after an insertion
        reprefill(bb, state, rows)
    trigger.record(pick, step)
    return latents


def select_rows(bb: Backbone, state: DecodeState, keep: list[int]) -> torch.Tensor:
    """Shrink the batch to rows `keep` (host indices, in order); returns them as a device tensor.

    Finished rows would otherwise go on costing a full row of compute every step until the longest
    answer of the batch ends."""
    index = torch.tensor(keep, device=state.mask.device)
    bb.select_rows(state.cache, index)
    for name in ("mask", "positions", "sinks", "ids", "ids_mask", "hidden", "logits", "made"):
        setattr(state, name, getattr(state, name)[index])
    state.next_positions = [state.next_positions[r] for r in keep]
    if state.inputs is not None:
        state.inputs = [torch.cat(state.inputs, 1)[index]]
    return index


def room_for(bb: Backbone, state: DecodeState, extra: int) -> bool:
    """Whether every row can still take `extra` positions within the model's context."""
    return max(state.next_positions) + extra <= bb.max_positions


def drop_last(bb: Backbone, state: DecodeState, n: int) -> None:
    """Forget the last n slots (all real, batch of one): the teacher-forced path looked ahead past a trigger."""
    if n <= 0:
        return
    bb.crop(state.cache, state.length - n)
    state.mask, state.sinks = state.mask[:, :-n], state.sinks[:, :-n]
    state.ids, state.ids_mask = state.ids[:, :-n], state.ids_mask[:, :-n]
    state.positions = state.positions - n
    state.next_positions = [p - n for p in state.next_positions]
    if state.inputs is not None:
        state.inputs = [torch.cat(state.inputs, 1)[:, :-n]]


def reprefill(bb: Backbone, state: DecodeState, rows: list[bool]) -> None:
    """MemGen's re-prefill: throw the cache away and re-encode every input so far (same numbers, its cost).

    The inputs are the embeddings the reasoner was fed, in cache order (left padding and masked
    latent slots included); positions follow from the mask because every real slot took the next one.
    """
    inputs = torch.cat(state.inputs, 1)
    state.inputs = [inputs]
    mask = state.mask.long()
    state.cache = bb.new_cache(bb.cache_capacity(state.cache))  # preallocated again when it was
    out = bb.forward(inputs, state.cache, (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1), mask)
    _take_last(state, out, torch.tensor(rows, device=mask.device))


def _take_last(state: DecodeState, out: StepOutput, pick: torch.Tensor) -> None:
    """The picked rows' next logits and hidden state come from the last slot of out."""
    state.logits = torch.where(pick[:, None], out.logits[:, -1], state.logits)
    state.hidden = torch.where(pick[:, None], out.hidden[:, -1], state.hidden)
