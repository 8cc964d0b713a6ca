"""A decoding step of fixed shapes, compiled once (GenerationConfig.compile).

The eager step (engine.decode_step) grows the mask by a column and the cache by a slot, so every
step has new shapes and torch.compile would trace it again each time. Here the cache is
preallocated (transformers' StaticCache, which keeps its fill on the device), the mask is a
(B, T_max) buffer whose next column is set in place from a device-side slot index, and the forward,
the last layer's query and the monitor's entropy over the static keys (future slots masked) are one
graph whose shapes never change. A consolidation is a second graph of fixed shape: the memory reads
the whole preallocated cache under the mask buffer, and its latents are written into the next K slots
for the rows that fire (the others get masked slots, as in the eager path). Token choice and the
trigger stay eager (a few small operations, read back once a step), and they see the usual growing
mask because state.mask is kept as a view of the buffer's filled columns. An eager change (the prompt
end's memory, a cut, MemGen's re-prefill and insertions: its weaver re-reads the growing token ids)
makes state.mask a new tensor; the next step copies it back into the buffer.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch

from ..errors import FlashmemError
from ..memory.base import LatentMemory, MemoryContext
from ..models.backbone import Backbone
from .engine import DecodeState, append_tokens
from .monitor import attention_entropy

# A preallocated cache's size is rounded up to this many slots, so batches whose prompts differ by a
# few tokens share one compiled graph instead of compiling again.
SLOT_BUCKET = 256


def bucketed(slots: int) -> int:
    return -(-slots // SLOT_BUCKET) * SLOT_BUCKET


def _step(forward: Callable, watch: bool, normalize: bool, last: int, scaling: float, capacity: int,
          embeds, cache, positions, mask, sinks, slot):
    """The graph: mark the new slot real, run the model on it, and the monitor's entropy of its query over
    layer `last`'s keys. Arguments other than tensors are constants of the graph (a change compiles anew)."""
    mask.index_fill_(1, slot, 1)
    out = forward(embeds, cache, positions[:, None], mask)
    entropy = None
    if watch:
        keys, _ = Backbone.cache_kv(cache, last, capacity)
        entropy = attention_entropy(out.query, keys, mask.bool()[:, None, :], sinks, scaling, normalize)[:, 0]
    return out.logits[:, -1], out.hidden[:, -1], entropy


def _inject(memory: LatentMemory, forward: Callable, k: int, cache, positions, mask, slot, pick, hidden, logits,
            made, no_ids):
    """The second graph: latents from the whole cache (future slots masked), written into slots
    [slot, slot + K) for the rows in pick (B,) bool; the picked rows' next logits and hidden state follow them."""
    ctx = MemoryContext(memory.backbone, cache, mask, positions, hidden, no_ids, no_ids, index=made)
    latents = memory(ctx)  # (B, K, d)
    offsets = torch.arange(k, device=slot.device)
    mask.index_copy_(1, slot + offsets, pick.long()[:, None].expand(-1, k).contiguous())
    out = forward(latents, cache, positions[:, None] + offsets[None, :], mask)
    return (latents, torch.where(pick[:, None], out.logits[:, -1], logits),
            torch.where(pick[:, None], out.hidden[:, -1], hidden))


# By (function, compile mode); torch.compile keeps a graph per set of guards.
_GRAPHS: dict[tuple[Callable, str | None], Callable] = {}


# Each batch size, cache size (bucket), dtype, model and monitor setting is a graph of its own; torch's
# default of 8 per function would end an evaluation over many prompt lengths (fullgraph=True makes that an
# error rather than a silent fall back to eager), so the step may keep this many.
GRAPH_LIMIT = 64


def _graph(fn: Callable, device: torch.device) -> Callable:
    # CUDA graphs replay fixed addresses and remove the launch overhead; the CPU has none to remove.
    mode = "reduce-overhead" if device.type == "cuda" else None
    if (fn, mode) not in _GRAPHS:
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, GRAPH_LIMIT)
        _GRAPHS[fn, mode] = torch.compile(fn, fullgraph=True, dynamic=False, mode=mode)
    return _GRAPHS[fn, mode]


def compiles(memory: LatentMemory | None) -> bool:
    """Whether `memory`'s consolidations can run as a compiled graph (else they run eagerly)."""
    return memory is not None and memory.traceable and not memory.writes_backbone


class CompiledStep:
    """step(state, token) -> entropy (B,) or None, as engine.decode_step, through one compiled graph."""

    def __init__(self, bb: Backbone, state: DecodeState, watch: bool, forward: Callable):
        capacity = bb.cache_capacity(state.cache)
        if capacity is None:
            raise FlashmemError("a compiled decoding step needs a preallocated cache (GenerationConfig.static_cache)")
        self.bb, self.watch, self.capacity, self.forward = bb, watch, capacity, forward
        self.normalize = state.normalize_entropy
        self.graph, self.inject = _graph(_step, bb.device), _graph(_inject, bb.device)
        self.mask = self.sinks = self.slot = None
        self.filled = -1  # columns of the buffer that state.mask shows; -1: not adopted yet

    def __call__(self, state: DecodeState, token: torch.Tensor) -> torch.Tensor | None:
        if not self._shows_buffer(state):
            self._adopt(state)
        append_tokens(state, token[:, None])
        embeds = self.bb.embed(token[:, None])
        logits, hidden, entropy = self._replay(self.graph, self.forward, self.watch, self.normalize,
                                               self.bb.n_layers - 1, self.bb.scaling, self.capacity, embeds,
                                               state.cache, state.positions, self.mask, self.sinks, self.slot)
        self._advance(state, 1)
        state.positions = state.positions + 1
        state.next_positions = [p + 1 for p in state.next_positions]
        state.logits, state.hidden = logits, hidden
        if state.inputs is not None:
            state.inputs.append(embeds)
        return entropy

    def consolidate(self, bb: Backbone, memory: LatentMemory, state: DecodeState, rows: list[bool],
                    pick: torch.Tensor) -> torch.Tensor:
        """engine.consolidate (same arguments, same result) as one compiled graph; needs compiles(memory).
        Every row's latents are computed, the picked rows' written: a fixed shape costs the others' share."""
        if not self._shows_buffer(state):
            self._adopt(state)
        k = memory.config.num_latents
        if self.filled + k >= self.capacity:
            raise FlashmemError(f"the preallocated cache is full ({self.filled} + {k} of {self.capacity} slots)")
        latents, logits, hidden = self._replay(self.inject, memory, self.forward, k, state.cache, state.positions,
                                               self.mask, self.slot, pick, state.hidden, state.logits, state.made,
                                               state.ids[:, :0])
        self._advance(state, k)
        state.positions = state.positions + k * pick.long()
        state.next_positions = [p + k * r for p, r in zip(state.next_positions, rows)]
        state.logits, state.hidden = logits, hidden
        state.made = state.made + pick.long()
        if state.inputs is not None:
            state.inputs.append(latents)
        return latents

    def _replay(self, graph: Callable, *args) -> tuple:
        """graph(*args). On CUDA a new step is marked first (the last replay's outputs may then be reused), and
        the outputs are copied: a CUDA graph writes every replay's outputs to the same memory, and the log keeps
        them longer."""
        if self.bb.device.type != "cuda":
            return graph(*args)
        torch.compiler.cudagraph_mark_step_begin()
        return tuple(None if out is None else out.clone() for out in graph(*args))

    def _advance(self, state: DecodeState, n: int) -> None:
        """n more buffer columns are filled; state.mask and state.sinks show them."""
        self.filled += n
        self.slot += n
        state.mask, state.sinks = self.mask[:, :self.filled], self.sinks[:, :self.filled]

    def _shows_buffer(self, state: DecodeState) -> bool:
        return (self.filled >= 0 and state.mask.shape == (self.mask.shape[0], self.filled)
                and state.mask.data_ptr() == self.mask.data_ptr() and state.sinks.data_ptr() == self.sinks.data_ptr())

    def _adopt(self, state: DecodeState) -> None:
        """Copy the state's mask and sinks into the buffers (the first step, or after an eager change). The
        buffers are allocated once per batch size and then written in place: the graph keeps seeing them."""
        b, t = state.mask.shape
        if t >= self.capacity:
            raise FlashmemError(f"the preallocated cache is full ({t} of {self.capacity} slots)")
        if self.mask is None or self.mask.shape[0] != b:
            device = state.mask.device
            self.mask = torch.zeros(b, self.capacity, dtype=torch.long, device=device)
            self.sinks = torch.zeros(b, self.capacity, dtype=torch.bool, device=device)
            self.slot = torch.zeros(1, dtype=torch.long, device=device)
            if device.type == "cuda":  # written in place between replays: CUDA graphs must keep their address
                for buffer in (self.mask, self.sinks, self.slot):
                    torch._dynamo.mark_static_address(buffer)
        mask, sinks = state.mask.clone(), state.sinks.clone()  # they may be views of the buffers themselves
        self.mask.zero_()
        self.sinks.zero_()
        self.mask[:, :t], self.sinks[:, :t] = mask, sinks
        self.slot.fill_(t)
        self.filled = t
        state.mask, state.sinks = self.mask[:, :t], self.sinks[:, :t]


@contextmanager
def compiled_step(bb: Backbone, state: DecodeState, watch: bool) -> Iterator[CompiledStep]:
    """A CompiledStep for one decoding loop, with the backbone's traceable forward open around it."""
    with bb.traceable_forward() as forward:
        yield CompiledStep(bb, state, watch, forward)
