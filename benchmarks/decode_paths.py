"""Decoding paths against each other, speed in one process, alternated run by run: the growing cache
(the default), the preallocated one (GenerationConfig.static_cache) and the compiled step
(GenerationConfig.compile), for plain decoding and FlashMem (an untrained memory: the prompt-end memory
and --consolidations more, at fixed steps). A path ending in `-bf16` runs the same with bfloat16 weights
(a second copy of the model, and of the memory, in this process): batch-1 decoding reads every weight once
per step, and this CPU has AVX-512 BF16.

A growing cache (transformers' DynamicCache) appends each step's keys and values with torch.cat, which
copies every layer's whole cache: profiled on this CPU at 4,096 tokens it is the step's largest operator
(benchmarks/profile_step.py). The static cache writes in place; the compiled step runs the forward, the
last layer's query and the monitor's entropy as one graph (compiled in the warm-up, not timed).

    python benchmarks/decode_paths.py --model smollm2-135m --contexts 1024,4096 --new-tokens 64 --repeats 3 \
        --paths growing,static,compiled --threads 1 --out results/bench/decode_paths_cpu.json
    python benchmarks/decode_paths.py ... --paths growing,growing-bf16,compiled-bf16
Ratios are each path's tokens/s over the first path's (medians), per method and context.
"""
from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import replace

import torch

from flashmem.evaluation.bench import bench_text, decode_once
from flashmem.memory.registry import build_memory, default_config
from flashmem.models.loader import load_backbone
from flashmem.models.runtime import set_threads

PATHS = {"growing": {}, "static": {"static_cache": True}, "compiled": {"compile": True}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--contexts", default="1024,4096")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--consolidations", type=int, default=2, help="FlashMem: after the prompt-end memory")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--paths", default="growing,static", help=f"comma-separated, the first is the reference: "
                    f"{', '.join(PATHS)}, each optionally with -bf16")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    paths = args.paths.split(",")
    if not paths or any(p.removesuffix("-bf16") not in PATHS for p in paths):
        ap.error(f"--paths: choose from {', '.join(PATHS)}, each optionally with -bf16")
    set_threads(args.threads)
    contexts = [int(c) for c in args.contexts.split(",")]
    models, stream, source = {}, None, None
    for dtype in sorted({"bfloat16" if p.endswith("-bf16") else "float32" for p in paths}):
        bb = load_backbone(args.model, device="cpu", dtype=dtype)
        if stream is None:
            stream, source = bench_text(bb, max(contexts) + args.new_tokens, args.data_dir)
        torch.manual_seed(0)
        memory = build_memory(bb, default_config("flashmem")).eval()
        policy = replace(memory.config, trigger="always", min_gap=max(1, args.new_tokens // (args.consolidations + 1)),
                         budget=args.consolidations)
        models[dtype] = {"plain": (bb, None, None), "flashmem": (bb, memory, policy)}

    def run(path: str, name: str, ctx: int) -> float:
        bb, mem, pol = models["bfloat16" if path.endswith("-bf16") else "float32"][name]
        return decode_once(bb, mem, pol, stream, ctx, args.new_tokens, **PATHS[path.removesuffix("-bf16")])["decode_s"]
    report = {"model": args.model, "new_tokens": args.new_tokens, "repeats": args.repeats,
              "paths": paths, "text": source, "threads": args.threads, "rows": []}
    for ctx in contexts:  # warm-up (and compilation) at every context: the compiled graph is per cache size
        for name in ("plain", "flashmem"):
            for path in paths:
                run(path, name, ctx)
    for ctx in contexts:
        for name in ("plain", "flashmem"):
            times: dict[str, list[float]] = {p: [] for p in paths}
            for r in range(args.repeats):
                for path in paths[r % len(paths):] + paths[: r % len(paths)]:  # the order rotates
                    times[path].append(run(path, name, ctx))
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
