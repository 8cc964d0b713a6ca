"""Free decoding with FlashMem memory: prefill, memory at the prompt end, then decode one token at a
time, watching the monitor and consolidating when it fires (within the budget and gap).

Batched with left padding; rows finish independently at EOS; greedy or temperature/top-p sampling.
With `forced` tokens the same loop scores a given answer (teacher forcing), which is how the tests
check that training and inference assign the same likelihood.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .backbone import Backbone
from .config import GenerationConfig
from .engine import append_tokens, chunk_entropy, consolidate, forward_chunk, prefill, rebuild_cache, room_for
from .memory import LatentMemory
from .monitor import TriggerState, may_fire, record_fire


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
    tokens: list[list[int]]  # generated ids per row, up to and including EOS
    traces: list[RowTrace]
    logprobs: torch.Tensor | None = None  # (B, N) log-probability of each forced token
    step_logits: list[torch.Tensor] | None = None  # logits used for each step, when asked for
    latents: list[tuple[int, torch.Tensor]] | None = None  # (step, (B, K, d)) per injection; -1 = prompt end


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


def stop_ids(bb: Backbone) -> set[int]:
    ids: set[int] = set()
    for source in (bb.model.config, getattr(bb.model, "generation_config", None)):
        eos = getattr(source, "eos_token_id", None) if source is not None else None
        if eos is not None:
            ids.update(eos if isinstance(eos, (list, tuple)) else [eos])
    if bb.tokenizer is not None and bb.tokenizer.eos_token_id is not None:
        ids.add(bb.tokenizer.eos_token_id)
    return ids


def pad_id(bb: Backbone) -> int:
    if bb.tokenizer is not None and bb.tokenizer.pad_token_id is not None:
        return bb.tokenizer.pad_token_id
    return min(stop_ids(bb) or {0})


@torch.no_grad()
def generate(
    bb: Backbone,
    ids: torch.Tensor,
    mask: torch.Tensor,
    memory: LatentMemory | None = None,
    gen: GenerationConfig | None = None,
    forced: torch.Tensor | None = None,
    monitor: bool = True,
    keep_logits: bool = False,
) -> GenerationResult:
    """Generate for left-padded prompts ids/mask (B, T).

    memory None or gen.use_memory False: plain decoding. monitor False skips the entropy (fastest
    plain path); with memory on and a monitor trigger it always runs.
    """
    gen = gen or GenerationConfig()
    cfg = memory.config if memory is not None else None
    use_memory = memory is not None and gen.use_memory
    fires_on_entropy = use_memory and cfg.trigger_memory and cfg.trigger == "monitor"
    watch = monitor or fires_on_entropy
    threshold = cfg.threshold if cfg is not None else None
    if fires_on_entropy and threshold is None:
        raise ValueError("memory has no threshold: calibrate it or set config.threshold")
    b = ids.shape[0]
    reprefill = use_memory and cfg.reprefill
    state, _ = prefill(bb, ids, mask, cfg.n_sinks if cfg else 4, keep_inputs=reprefill)
    traces = [RowTrace(threshold=threshold) for _ in range(b)]
    triggers = [TriggerState() for _ in range(b)]
    latents_log: list | None = [] if keep_logits else None
    all_rows = torch.ones(b, dtype=torch.bool, device=ids.device)
    if use_memory and cfg.prompt_memory and room_for(bb, state, cfg.num_latents):
        kept = consolidate(bb, memory, state, all_rows, keep_latents=keep_logits)
        if keep_logits:
            latents_log.append((-1, kept))
        for tr in traces:
            tr.prompt_memory = True
    delimiters = _delimiter_mask(bb) if use_memory and cfg.trigger == "delimiter" else None
    rng = torch.Generator().manual_seed(gen.seed) if gen.temperature > 0 else None
    eos = torch.tensor(sorted(stop_ids(bb)) or [-1], device=ids.device)
    finished = torch.zeros(b, dtype=torch.bool, device=ids.device)
    pad = pad_id(bb)
    steps = forced.shape[1] if forced is not None else gen.max_new_tokens
    out_tokens, logprobs, step_logits = [], [], []
    for step in range(steps):
        if keep_logits:
            step_logits.append(state.logits.clone())
        if forced is not None:
            token = forced[:, step]
            logprobs.append(torch.log_softmax(state.logits.float(), -1).gather(-1, token[:, None])[:, 0])
        else:
            token = choose_token(state.logits, gen, rng)
            token = torch.where(finished, torch.full_like(token, pad), token)
            finished = finished | torch.isin(token, eos)
        out_tokens.append(token)
        for r in range(b):
            traces[r].tokens.append(int(token[r]))
        if step == steps - 1 or bool(finished.all()) or not room_for(bb, state, 1):
            break
        append_tokens(state, token[:, None])
        out = forward_chunk(bb, state, bb.embed(token[:, None]), all_rows, want_query=watch)
        state.logits, state.hidden = out.logits[:, -1], out.hidden[:, -1]
        entropy = chunk_entropy(bb, state, out.query)[:, 0] if watch else None
        if entropy is not None:
            for r, value in enumerate(entropy.tolist()):
                traces[r].entropy.append(value)
        if not use_memory or not cfg.trigger_memory:
            continue
        signal = entropy > threshold if delimiters is None else delimiters[token]
        rows = [r for r in range(b) if bool(signal[r]) and not bool(finished[r])
                and may_fire(triggers[r], step, cfg.budget, cfg.min_gap)]
        if rows and room_for(bb, state, cfg.num_latents + 1):
            pick = torch.zeros(b, dtype=torch.bool, device=ids.device)
            pick[rows] = True
            kept = consolidate(bb, memory, state, pick, keep_latents=keep_logits)
            if reprefill:  # MemGen's code re-encodes the reasoner's whole sequence after an insertion
                rebuild_cache(bb, state, pick)
            if keep_logits:
                latents_log.append((step, kept))
            for r in rows:
                record_fire(triggers[r], step)
                traces[r].consolidations.append(step)
    tokens = _trim(torch.stack(out_tokens, 1), eos if forced is None else None)
    return GenerationResult(
        tokens=tokens,
        traces=traces,
        logprobs=torch.stack(logprobs, 1) if forced is not None else None,
        step_logits=step_logits if keep_logits else None,
        latents=latents_log,
    )


def _trim(tokens: torch.Tensor, eos: torch.Tensor | None) -> list[list[int]]:
    rows = []
    for row in tokens.tolist():
        if eos is not None:
            for i, t in enumerate(row):
                if t in eos.tolist():
                    row = row[: i + 1]
                    break
        rows.append(row)
    return rows


def _delimiter_mask(bb: Backbone) -> torch.Tensor:
    from .delimiters import delimiter_token_mask
    return delimiter_token_mask(bb.tokenizer, bb.model.config.vocab_size).to(bb.device)

