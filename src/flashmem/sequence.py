"""The teacher-forced path: one [prompt, memory, answer] sequence, scored chunk by chunk.

Training, calibration and NLL evaluation use it. Memory goes where free decoding would put it: at
the prompt end, then after each answer token where the trigger fires (same threshold, budget, gap,
computed on the sequence as it grows, earlier latents included). Between insertions the answer is
forwarded as one chunk, so a sequence costs about one forward plus the consolidations; its NLL
equals what generation.generate assigns to the same tokens with forced decoding (tested).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from .backbone import Backbone
from .engine import DecodeState, append_tokens, chunk_entropy, consolidate, drop_last, forward_chunk, prefill, room_for
from .memory import LatentMemory
from .monitor import TriggerState, first_trigger, record_fire


@dataclass
class ScoredAnswer:
    nll: torch.Tensor  # summed negative log-likelihood of the answer tokens (carries grad when asked)
    n_tokens: int
    insertions: list[int] = field(default_factory=list)  # answer indices after which memory was made
    entropies: list[float] = field(default_factory=list)  # monitor entropy at each answer token seen


def find_insertions(
    bb: Backbone, memory: LatentMemory | None, prompt: torch.Tensor, answer: torch.Tensor,
    with_entropy: bool = False,
) -> ScoredAnswer:
    """Score an answer (no grad) while letting the trigger decide where memory goes."""
    with torch.no_grad():
        return _run(bb, memory, _encode_prompt(bb, memory, prompt), answer, None, with_entropy)


def score_with_insertions(
    bb: Backbone, memory: LatentMemory | None, prompt: torch.Tensor, answer: torch.Tensor, insertions: list[int]
) -> ScoredAnswer:
    """Score an answer with memory after the given answer indices (differentiable in the memory)."""
    return _run(bb, memory, _encode_prompt(bb, memory, prompt), answer, list(insertions), False)


def training_nll(bb: Backbone, memory: LatentMemory, prompt: torch.Tensor, answer: torch.Tensor) -> ScoredAnswer:
    """Where the trigger fires is not differentiable: find it without grad, then score with grad.

    The prompt is encoded once: the search only appends to its cache, so cutting the cache back to
    the prompt and restoring the state's small tensors gives the scoring pass the same start.
    """
    cfg = memory.config
    state = _encode_prompt(bb, memory, prompt)
    insertions: list[int] = []
    if cfg.trigger_memory and cfg.budget > 0:
        start = replace(state)  # the tensors are replaced, never changed in place, as the state grows
        with torch.no_grad():
            insertions = _run(bb, memory, state, answer, None, False).insertions
        bb.crop(start.cache, start.length)
        state = start
    return _run(bb, memory, state, answer, insertions, False)


def _encode_prompt(bb: Backbone, memory: LatentMemory | None, prompt: torch.Tensor) -> DecodeState:
    """The decoding state after the prompt (T,): a batch of one, no padding. The backbone is frozen,
    so this needs no graph."""
    ids = prompt[None]
    with torch.no_grad():
        state, _ = prefill(bb, ids, torch.ones_like(ids), memory.config.n_sinks if memory is not None else 4)
    return state


def _run(bb, memory, state, answer, insertions, with_entropy) -> ScoredAnswer:
    """Continue from the prompt's state over answer (N,); insertions None means: let the trigger decide."""
    cfg = memory.config if memory is not None else None
    decide = insertions is None and cfg is not None and cfg.trigger_memory and cfg.budget > 0
    watch = with_entropy or (decide and cfg.trigger == "monitor")
    if decide and cfg.trigger == "monitor" and cfg.threshold is None:
        raise ValueError("memory has no threshold: calibrate it or set config.threshold")
    ids = state.ids
    one = torch.ones(1, dtype=torch.bool, device=ids.device)
    if cfg is not None and cfg.prompt_memory:
        consolidate(bb, memory, state, one)
    delimiters = None
    if decide and cfg.trigger == "delimiter":
        from .delimiters import delimiter_token_mask
        delimiters = delimiter_token_mask(bb.tokenizer, bb.model.config.vocab_size).to(ids.device)
    trig = TriggerState()
    result = ScoredAnswer(nll=torch.zeros((), device=ids.device), n_tokens=int(answer.numel()))
    planned = sorted(insertions) if insertions is not None else []
    pos, n = 0, int(answer.numel())
    while pos < n:
        end = n if not planned else min(planned.pop(0) + 1, n)
        chunk = answer[pos:end][None]
        append_tokens(state, chunk)
        out = forward_chunk(bb, state, bb.embed(chunk), one, want_query=watch, all_logits=True)
        # logits before the chunk predict its first token; the chunk's own logits predict the rest.
        logits = torch.cat([state.logits[:, None], out.logits[:, :-1]], dim=1)[0]
        entropy = chunk_entropy(bb, state, out.query)[0] if watch else None
        cut = _trigger_index(cfg, entropy, chunk[0], delimiters, pos, n, trig) if decide else None
        if cut is None and end < n:
            cut = end - pos - 1  # a planned insertion after the chunk's last token
        keep = chunk.shape[1] if cut is None else cut + 1
        result.nll = result.nll + _nll(logits[:keep], chunk[0, :keep])
        if entropy is not None:
            result.entropies.extend(entropy[:keep].tolist())
        drop_last(bb, state, chunk.shape[1] - keep)
        state.logits, state.hidden = out.logits[:, keep - 1], out.hidden[:, keep - 1]
        pos += keep
        if cut is not None and pos < n:
            if not room_for(bb, state, cfg.num_latents + 1):
                continue
            consolidate(bb, memory, state, one)
            record_fire(trig, pos - 1)
            result.insertions.append(pos - 1)
    return result


def _trigger_index(cfg, entropy, chunk, delimiters, pos, n, trig) -> int | None:
    """Index in the chunk of the first token after which the trigger fires (never the answer's last)."""
    signal = (entropy > cfg.threshold) if delimiters is None else delimiters[chunk]
    usable = min(len(signal), n - 1 - pos)  # memory after the last answer token predicts nothing
    return first_trigger(signal[:usable].tolist(), pos, trig, cfg.budget, cfg.min_gap)


def _nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum")
