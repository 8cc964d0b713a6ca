"""What a gist-trained memory names, position by position: for the first N validation items of the memory's own
setting, the most likely token of each latent's head distribution (the soft-token readout) beside token j of
the document's gist, and the share of items where they agree at each position. Positions past an item's gist
are not counted. Shows which parts of a fact a writer has learned to copy (the colour, the object, the digits).

    .venv/bin/python results/eviction/gist_hits.py results/eviction/memories/one128_gist --limit 40 \
        --out results/eviction/eval/c128f1/gist_hits_one128_gist_s300.json

A run in progress: make a memory folder from its checkpoint first (snapshot.py). --no-space reads the gist
without the leading space, as one128_gist was trained (commit 209e7bb).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from flashmem.api import FlashMem
from flashmem.data.recall import gist_text, make_document, make_item, parse_spec
from flashmem.models.runtime import set_threads
from flashmem.training.objectives import memory_point
from flashmem.training.scoring import encode_prompt


def named(fm: FlashMem, question: str) -> torch.Tensor:
    """(K,) the most likely token of each latent, the memory made where its policy makes it."""
    bb, memory = fm.backbone, fm.memory
    state = encode_prompt(bb, memory.config, fm.encode([question])[0][0])
    with torch.no_grad():
        _, logits = memory.latents_and_logits(memory_point(bb, memory.config, state))
    return logits[0].argmax(-1)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("memory")
    ap.add_argument("--limit", type=int, default=40)
    ap.add_argument("--form", default=None, help="gist form (default: the run's --gist)")
    ap.add_argument("--no-space", action="store_true", help="read the gist without its leading space")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    set_threads(1)
    train_config = json.loads((Path(args.memory) / "train_config.json").read_text())
    spec, form = parse_spec(train_config["data"]), args.form or train_config.get("gist", "pairs")
    fm = FlashMem.load("smollm2-135m", memory=args.memory)
    tok, k = fm.backbone.tokenizer, fm.memory.config.num_latents
    hits, counts, rows = torch.zeros(k), torch.zeros(k), []
    for i in range(args.limit):
        item, doc = make_item(spec, "validation", i), make_document(spec, "validation", i)
        text = ("" if args.no_space else " ") + gist_text(doc, form)
        gist = torch.tensor(tok(text, add_special_tokens=False).input_ids)[:k]
        names = named(fm, item.question)[: gist.numel()]
        hits[: gist.numel()] += (names == gist).float()
        counts[: gist.numel()] += 1
        rows.append({"item": i, "gist": tok.convert_ids_to_tokens(gist.tolist()),
                     "named": tok.convert_ids_to_tokens(names.tolist())})
    rate = (hits / counts.clamp_min(1)).tolist()
    print("hit rate by position: " + ", ".join(f"{r:.2f}" for r in rate), file=sys.stderr)
    Path(args.out).write_text(json.dumps({"memory": args.memory, "data": train_config["data"], "split": "validation",
                                          "items": args.limit, "form": form, "space": not args.no_space,
                                          "hit_rate": rate, "counted": counts.tolist(), "rows": rows},
                                         indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
