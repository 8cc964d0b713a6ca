"""Where each latent of a consolidator looks: for the first N validation items of the memory's own setting, the
share of each latent step's attention (mean over heads and layers of the consolidator) that falls on the
fact's key words (colour and object), on its value's digits, on the attention sinks, elsewhere in the cache
(the filler and the template) and on the earlier latents, beside the token each latent names. Says whether a writer that fails to copy the digits
fails to find them or finds them and cannot name them.

    .venv/bin/python results/eviction/gist_attention.py results/eviction/memories/one128_gistonly --limit 20 \
        --out results/eviction/eval/c128f1/gist_attention_one128_gistonly_s576.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

import flashmem.memory.consolidator as consolidator
from flashmem.api import FlashMem
from flashmem.data.recall import make_document, make_item, parse_spec
from flashmem.models.runtime import set_threads
from flashmem.training.objectives import memory_point
from flashmem.training.scoring import encode_prompt

SEEN: list[torch.Tensor] = []  # one (T,) attention over the cache per latent step and layer


def spy(query, cache_keys, cache_values, visible, latent_keys, latent_values, scaling):
    """consolidator.shared_kv_attention, recording its attention over the cache (mean over heads) first."""
    b, h, _, d = query.shape
    folded = query.reshape(b, cache_keys.shape[1], h // cache_keys.shape[1], d)
    s_cache = torch.matmul(folded, cache_keys.transpose(-1, -2)).masked_fill(~visible[:, None, None, :], float("-inf"))
    s_latent = torch.matmul(folded, latent_keys.transpose(-1, -2))
    probs = torch.softmax(torch.cat([s_cache, s_latent], -1).float() * scaling, dim=-1)
    SEEN.append(probs[0, ..., : cache_keys.shape[2]].mean(dim=(0, 1)))  # (n_kv, G, T) -> (T,)
    return ORIGINAL(query, cache_keys, cache_values, visible, latent_keys, latent_values, scaling)


ORIGINAL = consolidator.shared_kv_attention


def groups(tokens: list[str], fact) -> dict[str, list[int]]:
    """Cache positions of the fact's colour and object words and of its value's digits (the needle's sentence)."""
    words = {fact.colour} | set(fact.obj.split())
    key = [i for i, t in enumerate(tokens) if t.lstrip("Ġ").lower() in words or
           any(w.startswith(t.lstrip("Ġ").lower()) and len(t.lstrip("Ġ")) > 2 for w in words)]
    digits = [i for i, t in enumerate(tokens) if t.isdigit()]  # the filler holds none: only the value's digits
    return {"key words": key, "digits": digits}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("memory")
    ap.add_argument("--limit", type=int, default=20)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    set_threads(1)
    consolidator.shared_kv_attention = spy
    train_config = json.loads((Path(args.memory) / "train_config.json").read_text())
    spec = parse_spec(train_config["data"])
    fm = FlashMem.load("smollm2-135m", memory=args.memory)
    bb, memory = fm.backbone, fm.memory
    k, layers, rows = memory.config.num_latents, memory.config.num_layers, []
    share = {name: torch.zeros(k) for name in ("key words", "digits", "sinks", "elsewhere", "latents")}
    for i in range(args.limit):
        item, doc = make_item(spec, "validation", i), make_document(spec, "validation", i)
        state = encode_prompt(bb, memory.config, fm.encode([item.question])[0][0])
        context = memory_point(bb, memory.config, state)
        tokens = bb.tokenizer.convert_ids_to_tokens(state.ids[0].tolist())
        SEEN.clear()
        with torch.no_grad():
            _, logits = memory.latents_and_logits(context)
        attention = torch.stack(SEEN).reshape(k, layers, -1).mean(1)  # (K, T)
        where = groups(tokens, doc.facts[0])
        parts = {name: attention[:, idx].sum(-1) for name, idx in where.items()}
        parts["sinks"] = attention[:, : memory.config.n_sinks].sum(-1)
        parts["elsewhere"] = attention.sum(-1) - sum(parts.values())
        parts["latents"] = 1 - attention.sum(-1)
        for name, value in parts.items():
            share[name] += value / args.limit
        rows.append({"item": i, "named": bb.tokenizer.convert_ids_to_tokens(logits[0].argmax(-1).tolist()),
                     **{name: [round(v, 3) for v in value.tolist()] for name, value in parts.items()}})
    report = {name: [round(v, 3) for v in value.tolist()] for name, value in share.items()}
    for name, value in report.items():
        print(f"{name:10s} by latent: {value}", file=sys.stderr)
    Path(args.out).write_text(json.dumps({"memory": args.memory, "data": train_config["data"], "split": "validation",
                                          "items": args.limit, "mean_share": report, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
