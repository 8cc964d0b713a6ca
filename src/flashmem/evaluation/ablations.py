"""Ablations that isolate what a memory reads from its context (`flashmem eval --ablate ...`).

- foreign-context: every consolidation is made from *another* example's prompt-end state (its cache,
  last hidden state and tokens; the example after this one in the data file, the last one taking the
  first), then injected into this example's decoding as usual. Consolidations during decoding read
  that same foreign prompt state too: the foreign example has no decoding of its own, and reading
  this example's state there would not ablate the context.
- mean-latents: consolidation j of an answer (0: the prompt end) emits the mean of the latents the
  memory made at index j over the evaluated questions, put on the embedding scale as every memory's
  latents are: the best static prefix distilled from the trained memory itself. The means come from
  the teacher-forced path over the questions' reference answers (the path `--nll-only` scores), and
  are saved beside the result file so a resumed run uses the same ones.
If a memory does no better than these, its gain is a learned prefix's, not its context's.
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..config import MemoryConfig
from ..data.datasets import Example
from ..data.prompts import encode_prompts
from ..decoding.engine import memory_context, prefill, rewind
from ..errors import FlashmemError
from ..memory.base import LatentMemory, MemoryContext
from ..models.backbone import Backbone
from ..training.scoring import find_insertions

ABLATIONS = ("none", "foreign-context", "mean-latents")


def foreign_examples(examples: list[Example]) -> dict[int, Example]:
    """A fixed derangement: each example's foreign example is the next one in the list (the last takes the first)."""
    if len(examples) < 2:
        raise FlashmemError("--ablate foreign-context needs at least two questions in the data")
    return {ex.line: examples[(i + 1) % len(examples)] for i, ex in enumerate(examples)}


class ForeignContext(nn.Module):
    """A memory that reads the given foreign prompt-end states instead of the live decoding state."""

    def __init__(self, memory: LatentMemory, foreign: MemoryContext):
        super().__init__()
        self.memory, self.foreign, self.config = memory, foreign, memory.config

    writes_backbone = property(lambda self: self.memory.writes_backbone)

    def writer(self):
        return self.memory.writer()

    def forward(self, ctx: MemoryContext) -> torch.Tensor:
        # ctx.rows: the batch rows that fire (None: all); the foreign batch has the same rows.
        return self.memory(self.foreign if ctx.rows is None else self.foreign.select(ctx.rows))


@torch.no_grad()
def foreign_context(bb: Backbone, memory: LatentMemory, questions: list[str], system: str | None,
                    policy: MemoryConfig | None = None) -> ForeignContext:
    """The memory wrapped to read the prompt-end states of `questions` (one per batch row). A query-agnostic
    policy reads them where its own memory is made: before each foreign prompt's window (its question)."""
    policy = policy or memory.config
    ids, mask = encode_prompts(bb.tokenizer, questions, bb.device, system=system)
    state, _ = prefill(bb, ids, mask, policy.n_sinks)
    if policy.query_agnostic and policy.prompt_window > 0:
        rewind(bb, state, policy.prompt_window)
    return ForeignContext(memory, memory_context(bb, state))


class MeanLatents(nn.Module):
    """A memory whose consolidation j emits the stored mean latents of index j (the last one beyond them)."""

    def __init__(self, memory: LatentMemory, means: torch.Tensor):
        super().__init__()
        # written as the memory writes its own latents
        self.config, self._writer, self.writes_backbone = memory.config, memory.writer, memory.writes_backbone
        self.register_buffer("means", means)  # (J, K, d)

    def writer(self):
        return self._writer()

    def forward(self, ctx: MemoryContext) -> torch.Tensor:
        index = ctx.index if ctx.index is not None else torch.zeros_like(ctx.positions)
        return self.means[index.clamp(max=self.means.shape[0] - 1)].to(ctx.hidden.dtype)  # (B, K, d)


class _Recorder(nn.Module):
    """Passes a memory's latents through, keeping them by consolidation index."""

    def __init__(self, memory: LatentMemory):
        super().__init__()
        self.memory, self.config, self.seen = memory, memory.config, {}

    writes_backbone = property(lambda self: self.memory.writes_backbone)

    def writer(self):
        return self.memory.writer()

    def forward(self, ctx: MemoryContext) -> torch.Tensor:
        latents = self.memory(ctx)
        for row, j in enumerate(ctx.index.tolist()):
            self.seen.setdefault(j, []).append(latents[row].float().cpu())
        return latents


@torch.no_grad()
def mean_latents(bb: Backbone, memory: LatentMemory, policy: MemoryConfig, sequences, path: Path) -> MeanLatents:
    """The mean latents per consolidation index over teacher-forced `sequences` ((prompt, answer) pairs);
    computed once, then read from `path` (safetensors) on later calls."""
    if path.is_file():
        return MeanLatents(memory, load_file(str(path))["means"].to(bb.device))
    recorder = _Recorder(memory)
    for prompt, answer in sequences:
        find_insertions(bb, recorder, prompt, answer, policy=policy)
    if not recorder.seen:
        raise FlashmemError("--ablate mean-latents: the memory made no latents on these questions")
    means = torch.stack([torch.stack(recorder.seen[j]).mean(0) for j in range(max(recorder.seen) + 1)]).to(bb.device)
    means = memory.to_embedding_scale(means)  # (J, K, d), on the embedding scale like any memory's output
    counts = torch.tensor([len(recorder.seen[j]) for j in range(means.shape[0])])
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"means": means.float().cpu().contiguous(), "counts": counts}, str(path))
    return MeanLatents(memory, means)
