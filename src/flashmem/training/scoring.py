"""The teacher-forced path: one [prompt, memory, answer] sequence, scored chunk by chunk.

Training, threshold setting and NLL evaluation use it. Memory goes where free decoding would put
it: at the prompt end, then after each answer token where the trigger fires (same Trigger, same
threshold, budget and gap, computed on the sequence as it grows, earlier latents included). Between
insertions the answer is forwarded as one chunk, so a sequence costs about one forward plus the
consolidations; its NLL equals what generation.generate assigns to the same tokens with forced
decoding (tested).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from ..config import MemoryConfig
from ..decoding.engine import (
    DecodeState,
    append_tokens,
    chunk_entropy,
    consolidate,
    drop_last,
    forward_chunk,
    prefill,
    prompt_memory,
    room_for,
)
from ..decoding.generation import DEFAULT_SINKS
from ..decoding.trigger import Trigger
from ..memory.base import LatentMemory
from ..models.backbone import Backbone


@dataclass
class ScoredAnswer:
    nll: torch.Tensor  # summed negative log-likelihood of the answer tokens (carries grad when asked)
    n_tokens: int
    insertions: list[int] = field(default_factory=list)  # answer indices after which memory was made
    entropies: list[float] = field(default_factory=list)  # monitor entropy at each answer token seen
    # answer tokens that were not the argmax of their logits (a device tensor: read it only when needed);
    # 0 means greedy decoding would have produced the answer (lm-eval's is_greedy)
    misses: torch.Tensor | int = 0
    # summed KL(teacher || model) over the answer tokens, when a teacher's log-probabilities were given
    kl: torch.Tensor | float = 0.0


def find_insertions(bb: Backbone, memory: LatentMemory | None, prompt: torch.Tensor, answer: torch.Tensor,
                    with_entropy: bool = False, policy: MemoryConfig | None = None, window: int = 0) -> ScoredAnswer:
    """Score an answer (no grad) while letting the trigger decide where memory goes. window: the plain
    model's prompt window (a memory's is its policy's prompt_window)."""
    policy = _policy(memory, policy)
    with torch.no_grad():
        return _run(bb, memory, policy, encode_prompt(bb, policy, prompt), answer, None, with_entropy, window)


def score_with_insertions(bb: Backbone, memory: LatentMemory | None, prompt: torch.Tensor, answer: torch.Tensor,
                          insertions: list[int], policy: MemoryConfig | None = None) -> ScoredAnswer:
    """Score an answer with memory after the given answer indices (differentiable in the memory)."""
    policy = _policy(memory, policy)
    return _run(bb, memory, policy, encode_prompt(bb, policy, prompt), answer, list(insertions), False)


def training_nll(bb: Backbone, memory: LatentMemory, prompt: torch.Tensor, answer: torch.Tensor,
                 policy: MemoryConfig | None = None, teacher: torch.Tensor | None = None,
                 state: DecodeState | None = None) -> ScoredAnswer:
    """Where the trigger fires is not differentiable: find it without grad, then score with grad.
    teacher: (N, V) log-probabilities of each answer token's distribution from a teacher (objectives.py);
    given, the result's kl is summed over the answer. state: encode_prompt's result for this prompt, when the
    caller already has it (it is used up).

    The prompt is encoded once: the search only appends to its cache, so cutting the cache back to
    the prompt and restoring the state's small tensors gives the scoring pass the same start.
    """
    policy = _policy(memory, policy)
    state = state if state is not None else encode_prompt(bb, policy, prompt)
    insertions: list[int] = []
    if policy.trigger_memory and policy.budget > 0:
        start = replace(state)  # the tensors are replaced, never changed in place, as the state grows
        with torch.no_grad():
            insertions = _run(bb, memory, policy, state, answer, None, False).insertions
        bb.crop(start.cache, start.length)
        state = start
    return _run(bb, memory, policy, state, answer, insertions, False, teacher=teacher)


def encode_prompt(bb: Backbone, policy: MemoryConfig | None, prompt: torch.Tensor) -> DecodeState:
    """The decoding state after the prompt (T,): a batch of one, no padding. The backbone is frozen,
    so this needs no graph."""
    ids = prompt[None]
    with torch.no_grad():
        state, _ = prefill(bb, ids, torch.ones_like(ids), policy.n_sinks if policy is not None else DEFAULT_SINKS,
                           normalize_entropy=policy is not None and policy.entropy == "normalized")
    return state


def _policy(memory: LatentMemory | None, policy: MemoryConfig | None) -> MemoryConfig | None:
    return None if memory is None else (policy or memory.config)


def _run(bb, memory, policy, state: DecodeState, answer: torch.Tensor, insertions: list[int] | None,
         with_entropy: bool, window: int = 0, teacher: torch.Tensor | None = None) -> ScoredAnswer:
    """Continue from the prompt's state over answer (N,); insertions None means: let the trigger decide."""
    decide = insertions is None and policy is not None
    trigger = Trigger.build(bb, policy if decide else None, 1, answer.device)
    watch = with_entropy or trigger.needs_entropy
    prompt_memory(bb, memory, state, policy, policy.prompt_window if policy is not None else window)
    result = ScoredAnswer(nll=torch.zeros((), device=answer.device), n_tokens=int(answer.numel()))
    planned = sorted(insertions) if insertions is not None else []
    pos, n = 0, int(answer.numel())
    while pos < n:
        end = n if not planned else min(planned.pop(0) + 1, n)
        cut = _score_chunk(bb, state, answer, pos, end, trigger, watch, result, teacher)
        pos += answer[pos:end].numel() if cut is None else cut + 1
        if cut is not None and pos < n and room_for(bb, state, policy.num_latents + 1):
            consolidate(bb, memory, state, [True])
            trigger.record(torch.ones(1, dtype=torch.bool, device=answer.device), pos - 1)
            result.insertions.append(pos - 1)
    return result


def _score_chunk(bb, state: DecodeState, answer, pos: int, end: int, trigger: Trigger, watch: bool,
                 result: ScoredAnswer, teacher: torch.Tensor | None = None) -> int | None:
    """Forward answer[pos:end], add the NLL of its tokens up to the first insertion, forget the rest.

    Returns the index in the chunk after which memory goes (the trigger's, or a planned one at the
    chunk's end), or None when the whole chunk was kept without one.
    """
    chunk = answer[pos:end][None]
    append_tokens(state, chunk)
    out = forward_chunk(bb, state, bb.embed(chunk), [True], want_query=watch, all_logits=True)
    # logits before the chunk predict its first token; the chunk's own logits predict the rest.
    logits = torch.cat([state.logits[:, None], out.logits[:, :-1]], dim=1)[0]
    entropy = chunk_entropy(bb, state, out.query)[0] if watch else None
    usable = min(chunk.shape[1], answer.numel() - 1 - pos)  # memory after the last token predicts nothing
    cut = trigger.first_fire(None if entropy is None else entropy[:usable], chunk[0, :usable], pos) \
        if trigger.kind and usable > 0 else None
    if cut is None and end < answer.numel():
        cut = end - pos - 1  # a planned insertion after the chunk's last token
    keep = chunk.shape[1] if cut is None else cut + 1
    result.nll = result.nll + torch.nn.functional.cross_entropy(logits[:keep].float(), chunk[0, :keep], reduction="sum")
    result.misses = result.misses + (logits[:keep].detach().argmax(-1) != chunk[0, :keep]).sum()
    if teacher is not None:
        result.kl = result.kl + kl_divergence(teacher[pos:pos + keep], logits[:keep])
    if entropy is not None:
        result.entropies.extend(entropy[:keep].tolist())
    drop_last(bb, state, chunk.shape[1] - keep)
    state.logits, state.hidden = out.logits[:, keep - 1], out.hidden[:, keep - 1]
    return cut


def kl_divergence(teacher_logprobs: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Summed KL(teacher || model) over rows: teacher_logprobs and logits (n, V)."""
    student = torch.log_softmax(logits.float(), dim=-1)
    return (teacher_logprobs.exp() * (teacher_logprobs - student)).sum()
