"""What a training step optimises for one sequence: a weighted sum of four signals (flashmem's own
extension for memories that must carry evicted context; the paper trains with the first alone).

- sft: the answer's NLL with the memory (the paper's objective, the default);
- kl: distillation, KL(teacher || model) per answer token, where the teacher is the same frozen model
  with the whole prompt in view and no memory (xRAG, KV-Distill): the memory is pulled toward what
  the full context would have said, on every token's whole distribution, not only the target's;
- recon: reconstruction of what the cut evicted, the prompt between the sinks and the window, read
  right after the memory with nothing else of it in view (ICAE, 500xCompressor), tokens holding a
  digit weighted `recon_digit_weight` times (the content of a recall fact); needs prompt_window > 0;
- gist: latent j's token distribution under the frozen LM head (the soft-token readout) against token j of
  the document's gist (Example.gist: a recall document's keys and values), the memory made where the policy
  makes it. The answer's NLL, credited through the frozen reader, did not teach the consolidator to restate
  the document (RESULTS, "The floor of the task"), while the gist's own tokens in the latent slots answer
  every one-fact question: this term names the target instead of hoping the reader's gradient finds it.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..config import MemoryConfig
from ..decoding.engine import DecodeState, append_tokens, cut_prompt, forward_chunk, memory_context, prefill, rewind
from ..memory.base import LatentMemory, MemoryContext
from ..models.backbone import Backbone
from .scoring import encode_prompt, training_nll


@dataclass(frozen=True)
class Objective:
    """The weights of the three signals and the reconstruction's settings."""

    sft: float = 1.0
    kl: float = 0.0
    recon: float = 0.0
    recon_tokens: int = 256  # most evicted tokens scored (the first ones)
    recon_digit_weight: float = 1.0
    gist: float = 0.0
    gist_digit_weight: float = 1.0

    @property
    def scores_answer(self) -> bool:
        """Whether a step decodes the answer with the memory at all: a gist-only (or reconstruction-only)
        phase skips it, about half of a step's cost, and logs no answer NLL."""
        return self.sft > 0 or self.kl > 0


@dataclass
class SequenceLoss:
    """One sequence's parts, each summed over its tokens (normalised by the trainer over the step)."""

    nll: torch.Tensor | float  # answer NLL (0.0 when the objective does not score the answer)
    kl: torch.Tensor | float
    recon: torch.Tensor | float  # weighted reconstruction NLL
    recon_weight: float  # the weights' sum
    insertions: int
    gist: torch.Tensor | float = 0.0  # weighted gist cross-entropy summed over the named latents
    gist_weight: float = 0.0  # the weights' sum
    gist_tokens: int = 0  # latents scored: min(K, gist length)
    gist_hits: int = 0  # of those, the ones whose most likely token is the gist's


def sequence_loss(bb: Backbone, memory: LatentMemory, prompt: torch.Tensor, answer: torch.Tensor,
                  policy: MemoryConfig, objective: Objective, reconstruct: bool = True,
                  gist: torch.Tensor | None = None) -> SequenceLoss:
    """The parts for one sequence; the prompt's prefill is run once and copied for each part that needs it.
    reconstruct=False skips the document's own terms, reconstruction and gist (another example of the step
    already scores them). gist: the ids the latents should name (Sequence.gist)."""
    state = encode_prompt(bb, policy, prompt)
    teacher = teacher_logprobs(bb, prompt, answer, fork(bb, state)) if objective.kl > 0 else None
    recon, weight = reconstruction_nll(bb, memory, prompt, policy, objective, fork(bb, state)) \
        if objective.recon > 0 and reconstruct else (0.0, 0.0)
    named = gist_nll(memory, gist, policy, fork(bb, state), objective.gist_digit_weight) \
        if objective.gist > 0 and reconstruct and gist is not None else (0.0, 0.0, 0, 0)
    if not objective.scores_answer:
        return SequenceLoss(0.0, 0.0, recon, weight, 0, *named)
    scored = training_nll(bb, memory, prompt, answer, policy=policy, teacher=teacher, state=state)
    return SequenceLoss(scored.nll, scored.kl, recon, weight, len(scored.insertions), *named)


def fork(bb: Backbone, state: DecodeState) -> DecodeState:
    """An independent copy of a decoding state (its cache copied; the other tensors are replaced, never changed)."""
    return replace(state, cache=bb.clone_cache(state.cache))


@torch.no_grad()
def teacher_logprobs(bb: Backbone, prompt: torch.Tensor, answer: torch.Tensor,
                     state: DecodeState | None = None) -> torch.Tensor:
    """(N, V) float32 log-probabilities the plain model, whole prompt in view, gives each answer token's slot.
    state: the prompt's prefill when the caller has one (it is used up)."""
    if state is None:
        ids = prompt[None]
        state, _ = prefill(bb, ids, torch.ones_like(ids), 0)
    first = state.logits  # (1, V): predicts answer[0]
    append_tokens(state, answer[None])
    out = forward_chunk(bb, state, bb.embed(answer[None]), [True], all_logits=True)
    logits = torch.cat([first[:, None], out.logits[:, :-1]], dim=1)[0]
    return torch.log_softmax(logits.float(), dim=-1)


def reconstruction_nll(bb: Backbone, memory: LatentMemory, prompt: torch.Tensor, policy: MemoryConfig,
                       objective: Objective, state: DecodeState | None = None) -> tuple[torch.Tensor, float]:
    """(weighted NLL sum, weight sum) of the evicted span read right after the memory, the sinks the only
    other thing in view. The memory is made as the policy makes it (before the window if query-agnostic).
    state: the prompt's prefill when the caller has one (it is used up)."""
    window = policy.prompt_window
    state = state if state is not None else encode_prompt(bb, policy, prompt)
    latents = memory(memory_point(bb, policy, state))
    span = prompt[policy.n_sinks: prompt.numel() - window][: objective.recon_tokens]
    out = cut_prompt(bb, state, span[None], latents, all_logits=True, memory=memory)
    k = latents.shape[1]
    logits = out.logits[0, k - 1: k - 1 + span.numel()]  # the last latent predicts the span's first token
    nll = torch.nn.functional.cross_entropy(logits.float(), span, reduction="none")
    weights = content_weights(bb, span, objective.recon_digit_weight)
    return (nll * weights).sum(), float(weights.sum())


def memory_point(bb: Backbone, policy: MemoryConfig, state: DecodeState) -> MemoryContext:
    """What a prompt-end memory is made from under the policy: the state after the whole prompt, or, if
    query-agnostic, stepped back before the window (the state is changed)."""
    if policy.query_agnostic:
        rewind(bb, state, policy.prompt_window)
    return memory_context(bb, state)


def gist_nll(memory: LatentMemory, gist: torch.Tensor, policy: MemoryConfig, state: DecodeState,
             digit_weight: float = 1.0) -> tuple[torch.Tensor, float, int, int]:
    """(weighted cross-entropy sum, weight sum, latents scored, latents naming their token) of latent j's head
    distribution against gist token j, for the first min(K, G) latents, tokens holding a digit weighted
    digit_weight times; the memory is made where the policy makes it (before the window if query-agnostic,
    else at the prompt's end). state: the prompt's prefill (it is used up)."""
    bb = memory.backbone
    _, logits = memory.latents_and_logits(memory_point(bb, policy, state))
    n = min(logits.shape[1], gist.numel())
    logits, target = logits[0, :n].float(), gist[:n].to(logits.device)
    weights = content_weights(bb, target, digit_weight)
    nll = torch.nn.functional.cross_entropy(logits, target, reduction="none")
    return (nll * weights).sum(), float(weights.sum()), n, int((logits.argmax(-1) == target).sum())


def content_weights(bb: Backbone, ids: torch.Tensor, digit_weight: float) -> torch.Tensor:
    """1 per token, digit_weight for tokens whose text holds a digit."""
    if digit_weight == 1.0:
        return torch.ones(ids.numel(), device=ids.device)
    tokens = bb.tokenizer.convert_ids_to_tokens(ids.tolist())
    return torch.tensor([digit_weight if any(c.isdigit() for c in t) else 1.0 for t in tokens], device=ids.device)
