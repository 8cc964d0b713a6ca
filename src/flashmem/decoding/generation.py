"""Free decoding with latent memory: prefill, memory at the prompt end, then one token at a time,
consolidating where the trigger fires (within the budget and gap).

Batched with left padding; rows finish independently at EOS and leave the batch (once a quarter of
it has finished, the rest goes on alone); greedy or temperature/top-p sampling (the sampler's
generator lives on the model's device). With `forced` tokens the same loop scores a given answer
(teacher forcing), which is how the tests check that training and inference assign the same
likelihood. The loop reads back from the device once per step: which rows have finished and which
fire, together.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Protocol

import torch

from ..config import GenerationConfig, MemoryConfig
from ..memory.base import LatentMemory
from ..models.backbone import Backbone
from .compiled import CompiledStep, bucketed, compiled_step, compiles
from .engine import (
    DecodeState,
    consolidate,
    decode_step,
    maybe_consolidate,
    prefill,
    prompt_memory,
    room_for,
    select_rows,
)
from .trigger import Trigger

DEFAULT_SINKS = 4  # the monitor's sinks when there is no memory config to read them from


class StopRule(Protocol):
    """Decides which rows finish besides EOS (stopping.StopStrings: the harnesses' stop strings)."""

    def update(self, origin: list[int], tokens: list[int]) -> list[bool]: ...


@dataclass
class RowTrace:
    """Per generated step of one row: the monitor's entropy and whether memory was made after it."""

    threshold: float | None
    entropy: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    consolidations: list[int] = field(default_factory=list)  # answer steps after which memory was made
    prompt_memory: bool = False


@dataclass
class GenerationResult:
    tokens: list[list[int]]  # generated ids per row, up to and including EOS or the end of a stop string
    traces: list[RowTrace]
    logprobs: torch.Tensor | None = None  # (B, N) log-probability of each forced token
    step_logits: list[torch.Tensor] | None = None  # logits used for each step, when asked for
    latents: list[tuple[int, torch.Tensor]] | None = None  # (step, (B, K, d)) per injection; -1 = prompt end


@dataclass
class _Log:
    """What a generate call keeps while it runs (device tensors; read back once at the end). Each entry
    carries `origin`, the original row of each current batch row (the batch shrinks as rows finish)."""

    keep: bool
    origin: list[int] = field(default_factory=list)
    tokens: list[tuple[list[int], torch.Tensor]] = field(default_factory=list)
    entropy: list[tuple[list[int], torch.Tensor]] = field(default_factory=list)
    logprobs: list[torch.Tensor] = field(default_factory=list)
    step_logits: list[torch.Tensor] = field(default_factory=list)
    latents: list[tuple[int, torch.Tensor]] = field(default_factory=list)
    fired: list[tuple[int, list[int]]] = field(default_factory=list)  # (step, original rows that fired)
    stopped: dict[int, int] = field(default_factory=dict)  # original row -> step a stop rule ended it at


def choose_token(logits: torch.Tensor, gen: GenerationConfig, rng: torch.Generator | None) -> torch.Tensor:
    if gen.temperature == 0.0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / gen.temperature, dim=-1)
    if gen.top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (always at least the top token).
        drop = sorted_p.cumsum(-1) - sorted_p >= gen.top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return torch.multinomial(probs, 1, generator=rng).squeeze(-1)


def active_policy(memory: LatentMemory | None, gen: GenerationConfig, policy: MemoryConfig | None) -> MemoryConfig | None:
    """The insertion policy this call runs: None for plain decoding, else `policy` or the memory's own."""
    if memory is None or not gen.use_memory:
        return None
    return policy if policy is not None else memory.config


@torch.no_grad()
def generate(
    bb: Backbone, ids: torch.Tensor, mask: torch.Tensor, memory: LatentMemory | None = None,
    gen: GenerationConfig | None = None, forced: torch.Tensor | None = None, monitor: bool = True,
    keep_logits: bool = False, policy: MemoryConfig | None = None, stop: StopRule | None = None,
) -> GenerationResult:
    """Generate for left-padded prompts ids/mask (B, T).

    memory None or gen.use_memory False: plain decoding. policy: the insertion policy (threshold,
    budget, gap, ...) to run instead of memory.config. monitor False skips the entropy when no
    trigger needs it (fastest plain path). stop: rows it reports finish as at EOS (free decoding only).
    """
    gen = gen or GenerationConfig()
    policy = active_policy(memory, gen, policy)
    trigger = Trigger.build(bb, policy, ids.shape[0], ids.device)
    watch = monitor or trigger.needs_entropy
    n_sinks = (policy or memory.config).n_sinks if memory is not None else DEFAULT_SINKS
    normalize = ((policy or memory.config).entropy == "normalized") if memory is not None else False
    slots = cache_slots(ids, gen, policy, forced)
    state, _ = prefill(bb, ids, mask, n_sinks, keep_inputs=policy is not None and policy.reprefill,
                       normalize_entropy=normalize,
                       max_len=bucketed(slots) if gen.compile else slots if gen.static_cache else None)
    log = _Log(keep_logits, origin=list(range(ids.shape[0])))
    prompt_latents = prompt_memory(bb, memory, state, policy, prompt_window(gen, policy))
    if prompt_latents is not None:
        log.latents.append((-1, prompt_latents))
    # The tests' logits need the whole batch; a compiled step would compile again for every batch size.
    compact = gen.compact and forced is None and not keep_logits and not gen.compile
    with (compiled_step(bb, state, watch) if gen.compile else nullcontext(None)) as step:
        _decode(bb, state, memory, policy, trigger, gen, forced, watch, log, compact, stop if forced is None else None,
                step)
    threshold = (policy or memory.config).threshold if memory is not None else None
    stops = bb.stop_ids() if forced is None else None
    return _result(log, ids.shape[0], threshold, prompt_latents is not None, stops, bb.pad_id())


def cache_slots(ids: torch.Tensor, gen: GenerationConfig, policy: MemoryConfig | None,
                forced: torch.Tensor | None) -> int:
    """Slots a preallocated cache needs: the prompt, every answer token, the prompt-end memory and each
    consolidation the budget allows, and the prompt window read again after the cut."""
    new = forced.shape[1] if forced is not None else gen.max_new_tokens
    triggered = policy.budget if policy is not None and policy.trigger_memory else 0
    memory = 0 if policy is None else policy.num_latents * (int(policy.prompt_memory) + triggered)
    return ids.shape[1] + new + memory + prompt_window(gen, policy) + 1


def prompt_window(gen: GenerationConfig, policy: MemoryConfig | None) -> int:
    """How many prompt tokens stay visible after the prompt-end memory (0: all): the call's, else the policy's."""
    if gen.prompt_window is not None:
        return gen.prompt_window
    return policy.prompt_window if policy is not None else 0


def _decode(bb: Backbone, state: DecodeState, memory, policy, trigger: Trigger, gen: GenerationConfig,
            forced: torch.Tensor | None, watch: bool, log: _Log, compact: bool, stop: StopRule | None = None,
            compiled: CompiledStep | None = None) -> None:
    """The decoding loop: pick a token, feed it, let the trigger decide, drop finished rows, until done.
    compiled: the step as one compiled graph (GenerationConfig.compile), the same numbers."""
    rng = torch.Generator(device=state.mask.device).manual_seed(gen.seed) if gen.temperature > 0 else None
    eos = torch.tensor(bb.stop_ids() or [-1], device=state.mask.device)
    finished = torch.zeros(state.mask.shape[0], dtype=torch.bool, device=state.mask.device)
    steps = forced.shape[1] if forced is not None else gen.max_new_tokens
    pad = bb.pad_id()
    inject = compiled.consolidate if compiled is not None and compiles(memory) else consolidate
    for step in range(steps):
        token, finished = _pick(state, gen, rng, forced, step, finished, pad, eos, log)
        if step == steps - 1 or not room_for(bb, state, 1):
            break
        entropy = compiled(state, token) if compiled is not None else decode_step(bb, state, token, watch)
        fire = trigger.fire_rows(entropy, token, step, ~finished) if trigger.kind else None
        done, rows = _read_back(finished, fire)  # the step's one host round trip
        if stop is not None:
            finished, done, rows = _stop_rows(stop, token, finished, done, rows, log, step)
        if all(done):
            break  # this step's forward was not needed; like a break before it, it leaves no trace
        if entropy is not None:
            log.entropy.append((log.origin, entropy))
        latents = maybe_consolidate(bb, memory, state, trigger, policy, rows, step, inject) if any(rows) else None
        if latents is not None:
            log.fired.append((step, [log.origin[r] for r, fired in enumerate(rows) if fired]))
            if log.keep:
                log.latents.append((step, latents))
        if compact and sum(done) >= max(1, len(done) // 4):
            finished = _drop_finished(bb, state, trigger, finished, done, log)


def _stop_rows(stop: StopRule, token: torch.Tensor, finished: torch.Tensor, done: list[bool], rows: list[bool],
               log: _Log, step: int) -> tuple[torch.Tensor, list[bool], list[bool]]:
    """Rows the stop rule ends finish as at EOS (and make no memory after their last token)."""
    hits = stop.update(log.origin, token.tolist())  # a second read-back, only when a stop rule is given
    if not any(hits):
        return finished, done, rows
    log.stopped.update({log.origin[r]: step for r, hit in enumerate(hits) if hit})
    finished = finished | torch.tensor(hits, device=finished.device)
    return finished, [d or h for d, h in zip(done, hits)], [r and not h for r, h in zip(rows, hits)]


def _drop_finished(bb: Backbone, state: DecodeState, trigger: Trigger, finished: torch.Tensor, done: list[bool],
                   log: _Log) -> torch.Tensor:
    """Shrink the batch to the rows still decoding; returns their finished flags (all False)."""
    keep = [r for r, d in enumerate(done) if not d]
    index = select_rows(bb, state, keep)
    trigger.select(index)
    log.origin = [log.origin[r] for r in keep]
    return finished[index]


def _pick(state, gen, rng, forced, step, finished, pad, eos, log: _Log):
    """This step's token per row (forced, or chosen; finished rows get padding) and the new finished flags."""
    if log.keep:
        log.step_logits.append(state.logits.clone())
    if forced is not None:
        token = forced[:, step]
        log.logprobs.append(torch.log_softmax(state.logits.float(), -1).gather(-1, token[:, None])[:, 0])
    else:
        token = choose_token(state.logits, gen, rng)
        token = torch.where(finished, torch.full_like(token, pad), token)
        finished = finished | torch.isin(token, eos)
    log.tokens.append((log.origin, token))
    return token, finished


def _read_back(finished: torch.Tensor, fire: torch.Tensor | None) -> tuple[list[bool], list[bool]]:
    """(which rows have finished, which rows fire) in one device-to-host copy."""
    b = finished.shape[0]
    values = (finished if fire is None else torch.cat([finished, fire])).tolist()
    return [bool(v) for v in values[:b]], [bool(v) for v in values[b:]] or [False] * b


def _by_row(entries: list[tuple[list[int], torch.Tensor]], b: int, fill) -> list[list]:
    """Per original row, the values of a log of (origin, (B_now,) tensor) entries, read back once per
    stretch of steps with the same batch."""
    rows: list[list] = [[] for _ in range(b)]
    start = 0
    while start < len(entries):
        origin, end = entries[start][0], start
        while end < len(entries) and entries[end][0] is origin:
            end += 1
        values = torch.stack([t for _, t in entries[start:end]], 1).tolist()  # (B_now, steps)
        present = set(origin)
        for r, row in zip(origin, values):
            rows[r].extend(row)
        if fill is not None:
            for r in range(b):
                if r not in present:
                    rows[r].extend([fill] * (end - start))
        start = end
    return rows


def _result(log: _Log, b: int, threshold: float | None, prompt_memory: bool, eos: list[int] | None,
            pad: int) -> GenerationResult:
    """Read the log back to the host once and build the per-row traces."""
    tokens = _by_row(log.tokens, b, fill=pad)  # rows that left the batch go on with padding, as before
    entropy = _by_row(log.entropy, b, fill=None)
    traces = [RowTrace(threshold=threshold, entropy=entropy[r], tokens=list(tokens[r]),
                       prompt_memory=prompt_memory) for r in range(b)]
    for step, rows in log.fired:
        for r in rows:
            traces[r].consolidations.append(step)
    return GenerationResult(
        tokens=[_trim(row, eos)[: log.stopped.get(r, len(row)) + 1] for r, row in enumerate(tokens)], traces=traces,
        logprobs=torch.stack(log.logprobs, 1) if log.logprobs else None,
        step_logits=log.step_logits if log.keep else None, latents=log.latents if log.keep else None,
    )


def _trim(row: list[int], eos: list[int] | None) -> list[int]:
    """A row's tokens up to and including its first stop token (all of them when forced)."""
    if eos is not None:
        for i, t in enumerate(row):
            if t in eos:
                return row[: i + 1]
    return row
