"""What a trained memory's prompt-end latents say, as tokens: for each of the first N test items, the
vocabulary rows nearest (cosine) to each latent, beside the fact values and the greedy answer through the
memory's own cut. A soft-token readout's latents are expected token embeddings, so their nearest rows are
the tokens they name; a linear readout's nearest rows only hint at what they hold.

    .venv/bin/python results/eviction/latent_tokens.py results/eviction/memories/one128_soft --limit 12 \
        --out results/eviction/eval/c128f1/latent_tokens_one128_soft.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from flashmem.api import FlashMem
from flashmem.config import GenerationConfig
from flashmem.data.recall import make_document, make_item, parse_spec
from flashmem.decoding.generation import generate
from flashmem.models.runtime import set_threads


def nearest(bb, latents: torch.Tensor, top: int) -> list[list[str]]:
    """Per latent (K, d) its `top` nearest vocabulary rows by cosine, as token strings."""
    table = torch.nn.functional.normalize(bb.embedding_matrix().float(), dim=-1)
    scores = torch.nn.functional.normalize(latents.float(), dim=-1) @ table.T  # (K, V)
    return [[bb.tokenizer.decode([i]) for i in row] for row in scores.topk(top, dim=-1).indices.tolist()]


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("memory")
    ap.add_argument("--limit", type=int, default=12)
    ap.add_argument("--top", type=int, default=3)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    set_threads(1)
    train_config = json.loads((Path(args.memory) / "train_config.json").read_text())
    spec = parse_spec(train_config["data"])
    fm = FlashMem.load("smollm2-135m", memory=args.memory)
    rows = []
    for i in range(args.limit):
        item = make_item(spec, "test", i)
        ids, mask = fm.encode([item.question])
        with torch.no_grad():
            res = generate(fm.backbone, ids, mask, fm.memory, GenerationConfig(max_new_tokens=24), keep_logits=True)
        step, latents = res.latents[0]
        rows.append({"item": i, "values": [f.value for f in make_document(spec, "test", i).facts],
                     "asked": item.final, "answer": fm.backbone.tokenizer.decode(res.tokens[0]),
                     "latents": nearest(fm.backbone, latents[0], args.top)})
        print(f"item {i}: asked {item.final}; latents {[t[0] for t in rows[-1]['latents']]}; "
              f"answer {rows[-1]['answer']!r}", file=sys.stderr)
    Path(args.out).write_text(json.dumps({"memory": args.memory, "data": train_config["data"], "rows": rows},
                                         indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
