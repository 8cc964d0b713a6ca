"""How much a trained memory's prompt-end latents depend on the context they read.

For N questions, the memory's K latents at the prompt end are computed from each question's own cache
and last hidden state (the engine's prefill, then `memory_context`). Reported: the spread of the
latents across questions relative to their mean, ||l_i - mean|| / ||mean|| (0: the same latents for
every context, a static prefix), the cosine between each question's latents and the mean, and the
share of the latent that is the learned anchor's (cosine of the pre-scale output with the anchor).
The two context ablations of `flashmem eval --ablate` measure what this spread does to the answers.

    python benchmarks/latent_spread.py --memory results/recall/memories/flashmem \
        --data recall:context=1024,facts=16 --split test --limit 8 --threads 1
"""
from __future__ import annotations

import argparse
import json

import torch

from flashmem.data.datasets import load_examples
from flashmem.data.prompts import encode_prompts
from flashmem.decoding.engine import memory_context, prefill
from flashmem.memory.registry import load_memory
from flashmem.models.loader import load_backbone
from flashmem.models.runtime import set_threads


@torch.no_grad()
def prompt_latents(bb, memory, questions: list[str]) -> torch.Tensor:
    """(N, K, d) prompt-end latents, one question at a time (no padding effects)."""
    out = []
    for question in questions:
        ids, mask = encode_prompts(bb.tokenizer, [question], bb.device)
        state, _ = prefill(bb, ids, mask, memory.config.n_sinks)
        out.append(memory(memory_context(bb, state))[0].float().cpu())
    return torch.stack(out)


def spread(latents: torch.Tensor) -> dict:
    mean = latents.mean(0, keepdim=True)
    rel = ((latents - mean).norm(dim=-1) / mean.norm(dim=-1)).mean(-1)  # per question, averaged over K
    cos = torch.nn.functional.cosine_similarity(latents, mean.expand_as(latents), dim=-1).mean(-1)
    return {"relative_spread_mean": rel.mean().item(), "relative_spread_max": rel.max().item(),
            "cosine_to_mean_min": cos.min().item(), "cosine_to_mean_mean": cos.mean().item()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--memory", required=True)
    ap.add_argument("--data", default="gsm8k")
    ap.add_argument("--split", default="test")
    ap.add_argument("--limit", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    set_threads(args.threads)
    bb = load_backbone(args.model)
    memory = load_memory(args.memory, bb).eval()
    examples, _ = load_examples(args.data, args.split, limit=args.limit)
    latents = prompt_latents(bb, memory, [ex.question for ex in examples])
    anchor = memory.to_embedding_scale(memory.anchor.detach()).float().cpu()  # (K, d)
    anchor_cos = torch.nn.functional.cosine_similarity(latents, anchor.expand_as(latents), dim=-1).mean().item()
    report = {"memory": args.memory, "data": args.data, "split": args.split, "n": len(examples),
              **spread(latents), "cosine_to_anchor_mean": anchor_cos}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
