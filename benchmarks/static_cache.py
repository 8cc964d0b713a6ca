"""The preallocated cache against the growing one (GenerationConfig.static_cache), decoding speed in one
process, alternated run by run: plain decoding and FlashMem (an untrained memory under the paper's schedule:
the prompt-end memory and consolidations as the budget allows, here forced by --consolidations).

A growing cache (transformers' DynamicCache) appends each step's keys and values with torch.cat, which
copies every layer's whole cache: profiled on this CPU at 4,096 tokens it is the step's largest operator
(benchmarks/profile_step.py). The static cache writes in place.

    python benchmarks/static_cache.py --model smollm2-135m --contexts 1024,4096 --new-tokens 64 --repeats 3 --threads 1
"""
from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import replace

from flashmem.evaluation.bench import bench_text, decode_once
from flashmem.memory.registry import build_memory, default_config
from flashmem.models.loader import load_backbone
from flashmem.models.runtime import set_threads


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--contexts", default="1024,4096")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    set_threads(args.threads)
    bb = load_backbone(args.model, device="cpu", dtype="float32")
    contexts = [int(c) for c in args.contexts.split(",")]
    stream, source = bench_text(bb, max(contexts) + args.new_tokens, args.data_dir)
    memory = build_memory(bb, default_config("flashmem")).eval()
    policy = replace(memory.config, trigger="always", min_gap=max(1, args.new_tokens // 3), budget=2)
    runs = {"plain": (None, None), "flashmem": (memory, policy)}
    report = {"model": args.model, "new_tokens": args.new_tokens, "repeats": args.repeats, "text": source, "rows": []}
    for name, (mem, pol) in runs.items():  # warm-up
        for static in (False, True):
            decode_once(bb, mem, pol, stream, min(contexts), 8, static_cache=static)
    for ctx in contexts:
        for name, (mem, pol) in runs.items():
            times = {False: [], True: []}
            for r in range(args.repeats):
                for static in ((False, True) if r % 2 == 0 else (True, False)):
                    times[static].append(decode_once(bb, mem, pol, stream, ctx, args.new_tokens, static_cache=static)["decode_s"])
            row = {"context": ctx, "method": name, "growing_s": times[False], "static_s": times[True],
                   "static_over_growing_tokens_per_s": statistics.median(times[False]) / statistics.median(times[True])}
            report["rows"].append(row)
            print(f"{name} at {ctx}: growing {statistics.median(times[False]):.2f} s, static "
                  f"{statistics.median(times[True]):.2f} s (median of {args.repeats}); static/growing tokens/s "
                  f"{row['static_over_growing_tokens_per_s']:.3f}", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
