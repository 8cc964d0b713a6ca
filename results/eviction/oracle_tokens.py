"""The ceiling of a memory that names tokens: the cut with the latents replaced by the embeddings of the right
text (an oracle), read by the frozen model. If the plain model answers from the fact's own tokens placed where
the latents go, a soft-token readout has a reachable target; if not, even perfect tokens would not help.

Each variant puts the token embeddings of a text into the latent slots, made at the document's end before the
question (query-agnostic, as the trained memories) and read through the same cut (the attention sinks, the
latents, the question's last 26 tokens), then decodes greedily:
  digits    the asked value's 4 digits ("4821")
  pair      the asked fact's key and value ("blue locker 4821")
  sentence  the asked fact's sentence ("The access code of the blue locker is 4821.")
  pairs     every fact's key and value, in document order ("blue locker 4821, red safe 1234")
  facts     every fact sentence of the document, in document order (what a query-agnostic memory must hold)
  gist      the --gist-weight target (recall.gist_text, pairs): "red safe 1234; blue locker 4821"
  none      no latents (the plain cut)

    .venv/bin/python results/eviction/oracle_tokens.py --data recall:context=128,facts=1 --limit 100 \
        --out results/eviction/eval/c128f1/oracle_tokens.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from flashmem.config import GenerationConfig, MemoryConfig
from flashmem.data.answers import is_correct
from flashmem.data.prompts import encode_prompts
from flashmem.data.recall import gist_text, make_document, make_item, parse_spec
from flashmem.decoding.generation import generate
from flashmem.memory.base import LatentMemory
from flashmem.models.loader import load_backbone
from flashmem.models.runtime import set_threads

VARIANTS = ("none", "digits", "pair", "sentence", "pairs", "facts", "gist")
WINDOW = 26  # as run.sh's W128: holds every question, never the value (eval/c128*/window_check.json)


class Oracle(LatentMemory):
    """A memory whose latents are given token embeddings (the text the memory should have carried)."""

    method = "oracle"

    def __init__(self, bb, embeddings: torch.Tensor):
        super().__init__(bb, MemoryConfig(num_latents=embeddings.shape[0], prompt_window=WINDOW, query_agnostic=True,
                                          trigger_memory=False))
        self.embeddings = embeddings

    def forward(self, ctx):
        return self.embeddings[None].expand(ctx.hidden.shape[0], -1, -1)


def oracle_text(variant: str, doc) -> str:
    """The text a variant puts in the latent slots; doc.facts[0] is the fact asked about."""
    if variant == "digits":
        return doc.facts[0].value
    if variant == "pair":
        return _pair(doc.facts[0])
    if variant == "sentence":
        return doc.facts[0].sentence()
    if variant == "gist":
        return gist_text(doc, "pairs")
    ordered = sorted(doc.facts, key=lambda f: doc.text.index(f.sentence()))
    if variant == "pairs":
        return ", ".join(_pair(f) for f in ordered)
    return " ".join(f.sentence() for f in ordered)


def _pair(fact) -> str:
    return f"{fact.colour} {fact.obj} {fact.value}"


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="recall:context=128,facts=1")
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    set_threads(1)
    spec = parse_spec(args.data)
    bb = load_backbone("smollm2-135m")
    report = {"data": args.data, "split": "test", "items": args.limit, "window": WINDOW, "variants": {}}
    for variant in args.variants.split(","):
        right, rows = 0, []
        for i in range(args.limit):
            item, doc = make_item(spec, "test", i), make_document(spec, "test", i)
            ids, mask = encode_prompts(bb.tokenizer, [item.question])
            if variant == "none":
                memory, gen = None, GenerationConfig(max_new_tokens=24, prompt_window=WINDOW)
            else:
                text_ids = torch.tensor(bb.tokenizer(oracle_text(variant, doc), add_special_tokens=False).input_ids)
                memory, gen = Oracle(bb, bb.embed(text_ids).detach()), GenerationConfig(max_new_tokens=24)
            with torch.no_grad():
                res = generate(bb, ids, mask, memory, gen)
            answer = bb.tokenizer.decode(res.tokens[0], skip_special_tokens=True)
            ok = is_correct(answer, item.final, item.kind)
            right += ok
            rows.append({"item": i, "value": item.final, "answer": answer, "correct": ok})
        report["variants"][variant] = {"correct": right, "n": args.limit, "rows": rows}
        print(f"{variant}: {right}/{args.limit}", file=sys.stderr)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
