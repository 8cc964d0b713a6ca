"""What the Cognitive Monitor alone costs while decoding (issue 2).

Three ways of decoding the same prompt, alternating within one process, median over repeats:
  plain    flashmem.decoding.generation.generate, no memory, monitor off (the fastest plain path)
  monitor  the same, monitor on: the last layer's query is captured and the sink-free attention
           entropy computed every step; no memory, so nothing ever fires
  hf       transformers' model.generate, greedy (a reference line, not part of the ratio)
Our two paths decode teacher-forced on the text that follows the prompt, so both run exactly
--new-tokens steps; hf is greedy with min_new_tokens = max_new_tokens. Decode time runs from the end
of prefill to the last token; tokens/s = (new_tokens - 1) / decode time (the first token comes
from the prefill). With --profile (or when monitor/plain < 0.97) one monitored run at the longest
context is profiled with cProfile and the monitor path's share of decode time is printed.

    python benchmarks/monitor_overhead.py --contexts 1024,4096 --new-tokens 64 --repeats 3 --threads 1
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import shlex
import statistics
import sys
import time

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from flashmem.evaluation.bench import _ints, bench_text, decode_once
from flashmem.evaluation.report import fmt, machine_info, markdown_table
from flashmem.models.loader import load_backbone

WAYS = ("plain", "monitor", "hf")
# Functions of the monitor path, as cProfile names them (file:function).
MONITOR_PATH = {
    "engine.chunk_entropy": ("engine.py", "chunk_entropy"),
    "monitor.attention_entropy": ("monitor.py", "attention_entropy"),
    "backbone._project_query": ("backbone.py", "_project_query"),
    "backbone hook (_capture_attention_input)": ("backbone.py", "hook"),
    "register_forward_pre_hook": ("module.py", "register_forward_pre_hook"),
    "backbone.forward": ("backbone.py", "forward"),
    "generation.generate": ("generation.py", "generate"),
}


class _FirstToken(StoppingCriteria):
    """Notes when generate produced its first token (the end of the prefill); never stops anything."""

    def __init__(self):
        self.first: float | None = None

    def __call__(self, input_ids, scores, **kwargs):
        if self.first is None:
            self.first = time.perf_counter()
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def hf_decode(bb, stream: list[int], context: int, new_tokens: int) -> float:
    ids = torch.tensor([stream[:context]], device=bb.device)
    clock = _FirstToken()
    with torch.no_grad():
        out = bb.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                min_new_tokens=new_tokens, do_sample=False, pad_token_id=bb.tokenizer.pad_token_id,
                                stopping_criteria=StoppingCriteriaList([clock]))
    end = time.perf_counter()
    assert out.shape[1] == context + new_tokens
    return end - clock.first


def decode_seconds(way: str, bb, stream, context: int, new_tokens: int) -> float:
    if way == "hf":
        return hf_decode(bb, stream, context, new_tokens)
    return decode_once(bb, None, None, stream, context, new_tokens, monitor=(way == "monitor"))["decode_s"]


def measure(bb, stream, contexts, new_tokens, repeats, ways) -> dict:
    for way in ways:  # warm-up
        decode_seconds(way, bb, stream, contexts[0], 4)
    times = {(w, c): [] for c in contexts for w in ways}
    for c in contexts:
        for r in range(repeats):
            for way in ways[r % len(ways):] + ways[: r % len(ways)]:  # rotate the order each repeat
                times[(way, c)].append(decode_seconds(way, bb, stream, c, new_tokens))
                print(f"  {way:8s} context {c} run {r + 1}: {(new_tokens - 1) / times[(way, c)][-1]:.2f} tok/s",
                      file=sys.stderr, flush=True)
    return times


def profile_monitor(bb, stream, context: int, new_tokens: int) -> str:
    """cProfile one monitored run; each monitor-path function's cumulative time as a share of decode time."""
    profiler = cProfile.Profile()
    profiler.enable()
    decode = decode_once(bb, None, None, stream, context, new_tokens, monitor=True)["decode_s"]
    profiler.disable()
    stats = pstats.Stats(profiler)
    cumulative = {}
    for (file, _, name), (_, calls, _, cum, _) in stats.stats.items():
        for label, (suffix, func) in MONITOR_PATH.items():
            ours = "flashmem" in file or suffix == "module.py"
            if ours and file.endswith(suffix) and name == func:
                cumulative[label] = (cum, calls)
    rows = [[label, calls, f"{1000 * cum / max(calls, 1):.3f}", f"{100 * cum / decode:.1f}%"]
            for label, (cum, calls) in cumulative.items()]
    buffer = io.StringIO()
    pstats.Stats(profiler, stream=buffer).sort_stats("tottime").print_stats(12)
    return (markdown_table(["function", "calls", "ms per call", "share of decode time"], rows)
            + f"\n\ndecode time {decode:.2f} s for {new_tokens} tokens at context {context}; generate and "
            "backbone.forward also include the prefill (their first call), so their share exceeds 100%"
            + "\n\ncProfile, top 12 by own time (profiling inflates Python-heavy code):\n" + buffer.getvalue())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--contexts", default="1024,4096")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-dir", help="folder with gsm8k/test.jsonl (prompt text)")
    parser.add_argument("--no-hf", action="store_true", help="skip the transformers generate reference")
    parser.add_argument("--profile", action="store_true", help="always profile the monitor path")
    parser.add_argument("--threads", type=int, help="torch threads (1 is far steadier on a shared machine)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    contexts = _ints(args.contexts, "contexts", 8)
    ways = [w for w in WAYS if not (args.no_hf and w == "hf")]
    bb = load_backbone(args.model, dtype=args.dtype, device="cpu")
    stream, source = bench_text(bb, max(contexts) + args.new_tokens, args.data_dir)
    times = measure(bb, stream, contexts, args.new_tokens, args.repeats, ways)
    tps = {key: (args.new_tokens - 1) / statistics.median(runs) for key, runs in times.items()}
    rows = []
    for c in contexts:
        row = [c] + [fmt(tps[(w, c)], 2) for w in ways] + [fmt(tps[("monitor", c)] / tps[("plain", c)], 3)]
        if "hf" in ways:
            row.append(fmt(tps[("hf", c)] / tps[("plain", c)], 3))
        rows.append(row)
    headers = ["context"] + [f"{w} tok/s" for w in ways] + ["monitor/plain"] + (["hf/plain"] if "hf" in ways else [])
    m = machine_info()
    print(markdown_table(headers, rows))
    print(f"\nmedian of {args.repeats} runs per cell, methods alternating in one process, {args.new_tokens} new "
          f"tokens, batch 1, {args.model} ({args.dtype}); prompt: {source}")
    print(f"machine: {m['processor']}, {m['platform']}, {m['cpu_count']} CPUs, {m['torch_threads']} torch threads, "
          f"torch {m['torch']}, transformers {m['transformers']}")
    print("command: python " + " ".join(shlex.quote(a) for a in sys.argv))
    print("raw decode seconds: " + "; ".join(f"{w}@{c}: " + ",".join(f"{t:.2f}" for t in times[(w, c)])
                                             for c in contexts for w in ways))
    worst = min(tps[("monitor", c)] / tps[("plain", c)] for c in contexts)
    if args.profile or worst < 0.97:
        print(f"\nmonitor/plain {worst:.3f} < 0.97 or --profile: profiling one monitored run at context "
              f"{contexts[-1]}\n" if not args.profile else "\nprofile of one monitored run\n")
        print(profile_monitor(bb, stream, contexts[-1], args.new_tokens))
    return 0


if __name__ == "__main__":
    sys.exit(main())
