"""Where one decoding step's time goes, before anything is changed (issue 34, step 1).

Prefills CONTEXT tokens, then runs three phases of the engine's own steps under torch.profiler, each
after a few warm-up calls: `plain` (decode_step without the monitor: the fastest plain path),
`monitor` (decode_step with the last layer's entropy) and `consolidate` (an untrained FlashMem
memory read from the cache and injected, K latents). Each step ends with the host reading the chosen
token, as generation.py does. Per phase it reports the wall time per step (device synchronised), the
time inside operators on the host (self CPU) and, on a GPU, inside kernels (self device time): a
step far above its kernel time is host-bound. Also attention's share (scaled-dot-product and
softmax/matmul kernels of the attention and the monitor) and the top operators.

    python benchmarks/profile_step.py --model random:qwen2.5-1.5b --context 65536 --out profile.json   # a GPU
    python benchmarks/profile_step.py --model smollm2-135m --context 4096 --threads 1 --out p.json     # this CPU
"""
from __future__ import annotations

import argparse
import json
import time

import torch
from torch.profiler import ProfilerActivity, profile

from flashmem.decoding.engine import consolidate, decode_step, prefill
from flashmem.memory.registry import build_memory, default_config
from flashmem.models.loader import load_backbone
from flashmem.models.runtime import set_threads

ATTENTION_WORDS = ("scaled_dot_product", "attention", "flash", "efficient_attention")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def phases(bb, state, memory):
    """name -> one step of that phase (each ends with the host holding the next token)."""
    def plain():
        token = state.logits.argmax(-1)
        decode_step(bb, state, token, watch=False)
        return int(token[0])

    def monitored():
        token = state.logits.argmax(-1)
        entropy = decode_step(bb, state, token, watch=True)
        return int(token[0]), float(entropy[0])

    def consolidation():
        consolidate(bb, memory, state, [True])
        return int(state.logits.argmax(-1)[0])
    return {"plain": plain, "monitor": monitored, "consolidate": consolidation}


def profile_phase(bb, step, steps: int, warmup: int) -> dict:
    for _ in range(warmup):
        step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if bb.device.type == "cuda" else [])
    sync(bb.device)
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync(bb.device)
        wall = time.perf_counter() - start
    return summarise(prof, wall, steps, bb.device.type == "cuda")


def summarise(prof, wall: float, steps: int, cuda: bool) -> dict:
    events = prof.key_averages()
    device_of = (lambda e: getattr(e, "self_device_time_total", 0.0)) if cuda else (lambda e: 0.0)
    host_us = sum(e.self_cpu_time_total for e in events)
    device_us = sum(device_of(e) for e in events)
    key = device_of if cuda else (lambda e: e.self_cpu_time_total)
    attention_us = sum(key(e) for e in events if any(w in e.key.lower() for w in ATTENTION_WORDS))
    top = sorted(events, key=key, reverse=True)[:12]
    return {
        "wall_ms_per_step": 1e3 * wall / steps,
        "host_op_ms_per_step": host_us / 1e3 / steps,  # time inside operators on the host (launches included)
        "device_ms_per_step": device_us / 1e3 / steps if cuda else None,  # time inside kernels
        "attention_share": attention_us / max(sum(key(e) for e in events), 1e-9),
        "top_ops": [{"op": e.key, "ms_per_step": key(e) / 1e3 / steps, "calls_per_step": e.count / steps} for e in top],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="random:qwen2.5-1.5b")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--context", type=int, default=65536)
    ap.add_argument("--steps", type=int, default=16, help="profiled steps per phase")
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    set_threads(args.threads)
    bb = load_backbone(args.model, device=args.device, dtype=args.dtype)
    torch.manual_seed(0)
    memory = build_memory(bb, default_config("flashmem"), dtype=bb.dtype).eval()
    ids = torch.randint(100, bb.vocab_size - 100, (1, args.context), device=bb.device)
    with torch.no_grad():
        sync(bb.device)
        start = time.perf_counter()
        state, _ = prefill(bb, ids, torch.ones_like(ids), memory.config.n_sinks)
        sync(bb.device)
        prefill_s = time.perf_counter() - start
        results = {name: profile_phase(bb, step, args.steps, args.warmup) for name, step in phases(bb, state, memory).items()}
    report = {"model": args.model, "device": str(bb.device), "dtype": str(bb.dtype), "context": args.context,
              "steps": args.steps, "prefill_s": prefill_s, "torch": torch.__version__,
              "gpu": torch.cuda.get_device_name(bb.device) if bb.device.type == "cuda" else None,
              "phases": results}
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    print(f"{args.model} {report['dtype']} on {report['gpu'] or 'cpu'}, context {args.context}, prefill {prefill_s:.2f} s")
    print("| phase | wall ms/step | host op ms/step | device ms/step | attention share | top op |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        device = f"{r['device_ms_per_step']:.2f}" if r["device_ms_per_step"] is not None else "n/a"
        top = r["top_ops"][0]
        print(f"| {name} | {r['wall_ms_per_step']:.2f} | {r['host_op_ms_per_step']:.2f} | {device} | "
              f"{r['attention_share']:.0%} | {top['op']} {top['ms_per_step']:.2f} ms |")


if __name__ == "__main__":
    main()
