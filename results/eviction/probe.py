"""Is a document's content readable from the cache the consolidator reads? A linear probe per layer.

The Shared-KV Consolidator attends over one layer's cached keys and values (the last layer, or the last L)
and can only pass on what attention returns: mixtures of that layer's value vectors. If the digits of a
recall fact's value cannot be read linearly from the value vectors at their own positions, no training
makes the consolidator copy them. This probe fits a linear classifier (10 digits) on each layer's cached
values (and, for comparison, keys and the residual stream entering the layer) at every digit of every
fact, on documents of recall's train split, and scores it on other documents.

    .venv/bin/python results/eviction/probe.py --docs 240 --out results/eviction/probe_c128.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from flashmem.data.prompts import encode_prompts
from flashmem.data.recall import make_item, parse_spec
from flashmem.models.loader import load_backbone
from flashmem.models.runtime import set_threads


def features(bb, spec, docs: int) -> tuple[dict[str, list[torch.Tensor]], list[int], list[int]]:
    """Per site name (v{layer}, k{layer}, h{layer}) the vectors at every fact digit; the digits; their documents."""
    sites: dict[str, list[torch.Tensor]] = {}
    labels, owners = [], []
    digit_ids = {bb.tokenizer.convert_tokens_to_ids(str(d)): d for d in range(10)}
    for doc in range(docs):
        item = make_item(spec, "train", doc)
        ids, mask = encode_prompts(bb.tokenizer, [item.question])
        cache = bb.new_cache()
        with torch.no_grad():
            out = bb.model(input_ids=ids, attention_mask=mask, cache=cache, output_hidden_states=True)
        tokens = ids[0].tolist()
        positions = [i for i, t in enumerate(tokens) if t in digit_ids]
        for layer in range(bb.n_layers):
            keys, values = bb.cache_kv(cache, layer)
            sites.setdefault(f"v{layer}", []).append(values[0, :, positions].transpose(0, 1).reshape(len(positions), -1))
            sites.setdefault(f"k{layer}", []).append(keys[0, :, positions].transpose(0, 1).reshape(len(positions), -1))
            sites.setdefault(f"h{layer}", []).append(out.hidden_states[layer][0, positions])
        labels += [digit_ids[tokens[i]] for i in positions]
        owners += [doc] * len(positions)
    return sites, labels, owners


def probe(x: torch.Tensor, y: torch.Tensor, train: torch.Tensor, steps: int = 300) -> float:
    """Held-out accuracy of a multinomial logistic regression (standardised inputs, AdamW, weight decay)."""
    mu, sd = x[train].mean(0), x[train].std(0) + 1e-6
    x = (x - mu) / sd
    torch.manual_seed(0)
    clf = torch.nn.Linear(x.shape[1], 10)
    opt = torch.optim.AdamW(clf.parameters(), lr=1e-2, weight_decay=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(clf(x[train]), y[train]).backward()
        opt.step()
    with torch.no_grad():
        return float((clf(x[~train]).argmax(-1) == y[~train]).float().mean())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--setting", default="context=128,facts=4")
    p.add_argument("--docs", type=int, default=240, help="documents; the last quarter is held out")
    p.add_argument("--layers", default="0,8,15,22,27,28,29", help="layers probed")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    set_threads(args.threads)
    start = time.time()
    bb = load_backbone(args.model, device="cpu")
    spec = parse_spec(f"recall:{args.setting}")
    sites, labels, owners = features(bb, spec, args.docs)
    y, owner = torch.tensor(labels), torch.tensor(owners)
    train = owner < int(0.75 * args.docs)
    rows = []
    for layer in map(int, args.layers.split(",")):
        row = {"layer": layer}
        for kind in ("v", "k", "h"):
            row[kind] = probe(torch.cat(sites[f"{kind}{layer}"]).float(), y, train)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    chance = float((y[~train] == torch.bincount(y[train]).argmax()).float().mean())
    report = {"model": args.model, "setting": args.setting, "docs": args.docs, "digits": len(labels),
              "held_out_digits": int((~train).sum()), "majority_class_accuracy": chance,
              "probe": "multinomial logistic regression on standardised vectors, AdamW lr 1e-2, wd 1e-2, 300 full-batch "
                       "steps; trained on the first 75% of documents, scored on the rest",
              "sites": {"v": "cached values of the layer (all KV heads concatenated)", "k": "cached keys (rotated)",
                        "h": "residual stream entering the layer"},
              "rows": rows, "seconds": round(time.time() - start, 1)}
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "rows"}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
