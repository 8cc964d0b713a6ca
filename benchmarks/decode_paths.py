"""Decoding paths against each other, speed in one process, alternated run by run: the growing cache
(the default), the preallocated one (GenerationConfig.static_cache) and the compiled step
(GenerationConfig.compile), for plain decoding and FlashMem (an untrained memory: the prompt-end memory
and --consolidations more, at fixed steps). Optionally in bfloat16 weights: batch-1 decoding reads every
weight once per step, and this CPU has AVX-512 BF16.

A growing cache (transformers' DynamicCache) appends each step's keys and values with torch.cat, which
copies every layer's whole cache: profiled on this CPU at 4,096 tokens it is the step's largest operator
(benchmarks/profile_step.py). The static cache writes in place; the compiled step runs the forward, the
last layer's query and the monitor's entropy as one graph (compiled in the warm-up, not timed).

    python benchmarks/decode_paths.py --model smollm2-135m --contexts 1024,4096 --new-tokens 64 --repeats 3 \
        --paths growing,static,compiled --threads 1 --out results/bench/decode_paths_cpu.json
Ratios are each path's tokens/s over the first path's (medians), per method and context.
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

PATHS = {"growing": {}, "static": {"static_cache": True}, "compiled": {"compile": True}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--contexts", default="1024,4096")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--consolidations", type=int, default=2, help="FlashMem: after the prompt-end memory")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--paths", default="growing,static", help=f"comma-separated, the first is the reference: {', '.join(PATHS)}")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    paths = args.paths.split(",")
    if not paths or any(p not in PATHS for p in paths):
        ap.error(f"--paths: choose from {', '.join(PATHS)}")
    set_threads(args.threads)
    bb = load_backbone(args.model, device="cpu", dtype=args.dtype)
    contexts = [int(c) for c in args.contexts.split(",")]
    stream, source = bench_text(bb, max(contexts) + args.new_tokens, args.data_dir)
    memory = build_memory(bb, default_config("flashmem")).eval()
    policy = replace(memory.config, trigger="always", min_gap=max(1, args.new_tokens // (args.consolidations + 1)),
                     budget=args.consolidations)
    runs = {"plain": (None, None), "flashmem": (memory, policy)}
    report = {"model": args.model, "dtype": args.dtype, "new_tokens": args.new_tokens, "repeats": args.repeats,
              "paths": paths, "text": source, "threads": args.threads, "rows": []}
    for ctx in contexts:  # warm-up (and compilation) at every context: the compiled graph is per cache size
        for mem, pol in runs.values():
            for path in paths:
                decode_once(bb, mem, pol, stream, ctx, args.new_tokens, **PATHS[path])
    for ctx in contexts:
        for name, (mem, pol) in runs.items():
            times: dict[str, list[float]] = {p: [] for p in paths}
            for r in range(args.repeats):
                for path in paths[r % len(paths):] + paths[: r % len(paths)]:  # the order rotates
                    times[path].append(decode_once(bb, mem, pol, stream, ctx, args.new_tokens, **PATHS[path])["decode_s"])
            median = {p: statistics.median(t) for p, t in times.items()}
            row = {"context": ctx, "method": name, "decode_s": times,
                   "tokens_per_s_over_" + paths[0]: {p: median[paths[0]] / median[p] for p in paths}}
            report["rows"].append(row)
            print(f"{name} at {ctx}: " + ", ".join(f"{p} {median[p]:.2f} s" for p in paths)
                  + f" (median of {args.repeats}); tokens/s over {paths[0]}: "
                  + ", ".join(f"{p} {median[paths[0]] / median[p]:.3f}" for p in paths[1:]), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
