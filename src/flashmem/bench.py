"""`flashmem bench`: the paper's efficiency table (vanilla vs FlashMem vs MemGen), measured here.

For each context length a prompt of exactly that many tokens of real text is decoded for N tokens
by every method. Timing runs all methods in this one process, alternating within each repeat
(the order rotates), and reports medians; peak memory runs each method in its own subprocess
(`python -m flashmem.bench --worker SPEC`): the peak resident set of prefill + decode per context
(Linux: VmHWM, reset before each context; elsewhere ru_maxrss).

Fair schedule: both memories fire on the same fixed schedule, memory at the prompt end plus
--consolidations more, one every new_tokens // (N + 1) steps (trigger = monitor, threshold -1:
the entropy is never negative, so only budget and gap decide). MemGen's delimiter trigger is
replaced by that schedule, so both methods make the same number of consolidations at the same steps.
Decoding is teacher-forced on the text that follows the prompt, so every method decodes exactly
N tokens (greedy decoding could stop at EOS); the per-step work is that of greedy decoding.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from .backbone import Backbone
from .config import GenerationConfig, MemoryConfig, atomic_write_text
from .cli import set_threads
from .errors import FlashmemError
from .generation import generate
from .memory import LatentMemory, build_memory, load_memory
from .report import bench_markdown, machine_info, plot_latency

SCHEDULE_THRESHOLD = -1.0  # below any entropy: the budget and gap alone decide when memory is made
WORKER_TAG = "FLASHMEM_BENCH_WORKER "
RATIOS = (("flashmem", "vanilla"), ("flashmem", "memgen"))


def register(sub) -> None:
    from .cli import add_model_argument

    p = sub.add_parser("bench", help="efficiency table: vanilla vs FlashMem vs MemGen",
                       description="Decoding speed, per-step latency and peak memory of vanilla decoding, "
                       "FlashMem and MemGen at several context lengths, on this machine.")
    add_model_argument(p)
    p.add_argument("--memory", help="FlashMem memory folder (default: an untrained one; speed does not depend on training)")
    p.add_argument("--memgen-memory", help="MemGen memory folder (default: an untrained one)")
    p.add_argument("--contexts", default="1024,2048,4096,7168", help="prompt lengths in tokens (comma-separated)")
    p.add_argument("--new-tokens", type=int, default=32, help="tokens decoded per run (default 32)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per method and context; the median is kept")
    p.add_argument("--consolidations", type=int, default=2,
                   help="consolidations per response after the prompt-end memory, same steps for both memories")
    p.add_argument("--data-dir", help="folder with gsm8k/test.jsonl (the prompt text; default ../shared/data)")
    p.add_argument("--no-memory-workers", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--out", required=True, metavar="FILE.json", help="results JSON")
    p.add_argument("--plot", metavar="FILE.png", help="plot per-step latency against context length")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    contexts = parse_contexts(args.contexts)
    if args.new_tokens < 2 or args.repeats < 1 or args.consolidations < 0:
        raise FlashmemError("need --new-tokens >= 2, --repeats >= 1 and --consolidations >= 0")
    bb = load(args.model, args.dtype)
    methods, notes = bench_methods(bb, args.memory, args.memgen_memory, args.consolidations, args.new_tokens)
    stream, source = bench_text(bb.tokenizer, max(contexts) + args.new_tokens, args.data_dir, bb)
    check_room(bb, contexts, args.new_tokens, methods)
    timings = time_methods(bb, methods, stream, contexts, args.new_tokens, args.repeats)
    memory = {} if args.no_memory_workers else peak_memory(args, list(methods), contexts, notes)
    results = [_result(name, ctx, runs, args.new_tokens, memory.get(name))
               for (name, ctx), runs in timings.items()]
    report = {
        "settings": _settings(args, bb, methods, contexts, source, notes),
        "results": results,
        "baseline_rss_mb": {name: m.get("baseline_rss_mb") for name, m in memory.items()},
        "peak_rss_measure": {name: m.get("measure") for name, m in memory.items()},
        "ratios": ratios(results),
    }
    atomic_write_text(Path(args.out), json.dumps(report, indent=2) + "\n")
    print(bench_markdown(report))
    if args.plot:
        plot_latency(args.plot, results)
        print(f"plot: {args.plot}", file=sys.stderr)
    return 0


def parse_contexts(text: str) -> list[int]:
    try:
        contexts = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise FlashmemError(f"--contexts must be comma-separated integers, got {text!r}") from None
    if not contexts or contexts[0] < 8:
        raise FlashmemError(f"--contexts must be integers >= 8, got {text!r}")
    return contexts



def load(model: str, dtype: str) -> Backbone:
    from .models import load_backbone

    hf_model, tokenizer = load_backbone(model, dtype=dtype)
    return Backbone(hf_model, tokenizer, name=model)


# ---- the methods and their schedule -----------------------------------------------------------
def bench_methods(bb, flashmem_dir, memgen_dir, n_consolidations, new_tokens) -> tuple[dict, list[str]]:
    """{name: memory or None} for the methods that can run here, and notes on what was built."""
    methods: dict[str, LatentMemory | None] = {"vanilla": None}
    notes: list[str] = []
    for name, folder in (("flashmem", flashmem_dir), ("memgen", memgen_dir)):
        try:
            methods[name] = bench_memory(bb, name, folder, n_consolidations, new_tokens)
        except FlashmemError:
            raise
        except Exception as err:  # the baseline module may be missing or unfinished: skip, say why
            if name == "flashmem":
                raise
            notes.append(f"memgen skipped: {type(err).__name__}: {err}")
            continue
        notes.append(f"{name}: {folder or 'untrained (speed and memory do not depend on training)'}")
    return methods, notes


def bench_memory(bb: Backbone, method: str, folder: str | None, n: int, new_tokens: int) -> LatentMemory:
    """A loaded or untrained memory with the benchmark's fixed firing schedule."""
    if folder:
        memory = load_memory(folder, bb)
        if memory.config.method != method:
            raise FlashmemError(f"{folder} is a {memory.config.method} memory, not {method}")
    else:
        torch.manual_seed(0)
        if method == "memgen":
            from .memgen import memgen_config
            config = memgen_config()
        else:
            config = MemoryConfig(method=method)
        memory = build_memory(bb, config)
    apply_schedule(memory.config, n, new_tokens)
    return memory.eval()


def apply_schedule(cfg: MemoryConfig, n: int, new_tokens: int) -> None:
    """Memory at the prompt end, then n consolidations, one every new_tokens // (n + 1) steps."""
    cfg.trigger, cfg.threshold = "monitor", SCHEDULE_THRESHOLD
    cfg.budget, cfg.min_gap = n, max(1, new_tokens // (n + 1))
    cfg.prompt_memory, cfg.trigger_memory = True, n > 0


def bench_text(tokenizer, n_tokens: int, data_dir: str | None, bb: Backbone) -> tuple[list[int], str]:
    """At least n_tokens ids of real text: GSM8K test questions joined by blank lines, else vocabulary cycling."""
    from .data import load_examples

    try:
        examples, report = load_examples("gsm8k", "test", data_dir)
    except FlashmemError:
        examples, report = [], None
    if examples:
        ids = tokenizer("\n\n".join(ex.question for ex in examples), add_special_tokens=False)["input_ids"]
        source = f"GSM8K test questions joined by blank lines ({report.path})"
    else:
        special = set(tokenizer.all_special_ids)
        ids = [i for i in range(bb.model.config.vocab_size) if i not in special]
        source = "tokenizer vocabulary cycled (no GSM8K data found)"
    if len(ids) < n_tokens:
        ids = ids * math.ceil(n_tokens / len(ids))
        source += ", repeated"
    return ids[:n_tokens], source


def check_room(bb: Backbone, contexts: list[int], new_tokens: int, methods: dict) -> None:
    latents = max((m.config.num_latents * (1 + m.config.budget) for m in methods.values() if m), default=0)
    longest = bb.max_positions - new_tokens - latents
    if contexts[-1] > longest:
        raise FlashmemError(f"context {contexts[-1]} does not fit: the model has {bb.max_positions} positions, "
                            f"so with {new_tokens} new tokens and {latents} latents the longest is {longest}")


# ---- timing -----------------------------------------------------------------------------------
class _PrefillClock(Backbone):
    """The same backbone, noting when each forward returns; in generate the first one is the prefill."""

    def __init__(self, bb: Backbone):
        self.__dict__.update(bb.__dict__)
        self.marks: list[float] = []

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        self.marks.append(time.perf_counter())
        return out


def decode_once(bb: Backbone, memory: LatentMemory | None, stream: list[int], context: int, new_tokens: int,
                monitor: bool = False) -> dict:
    """Prefill `context` tokens, decode `new_tokens` (forced to the following text); seconds of each phase.

    monitor=True runs the entropy every step even without memory (the monitor's own cost).
    """
    ids = torch.tensor([stream[:context]], device=bb.device)
    forced = torch.tensor([stream[context: context + new_tokens]], device=bb.device)
    clock = _PrefillClock(bb)
    start = time.perf_counter()
    result = generate(clock, ids, torch.ones_like(ids), memory, GenerationConfig(), forced=forced, monitor=monitor)
    end = time.perf_counter()
    trace = result.traces[0]
    return {"prefill_s": clock.marks[0] - start, "decode_s": end - clock.marks[0],
            "consolidations": len(trace.consolidations), "prompt_memory": trace.prompt_memory}


def time_methods(bb, methods: dict, stream, contexts, new_tokens, repeats) -> dict:
    """{(method, context): [run, ...]}: per context, each repeat runs every method, order rotated."""
    names = list(methods)
    for name in names:  # warm-up: first-call costs (allocator, kernels) stay out of the timings
        decode_once(bb, methods[name], stream, contexts[0], min(new_tokens, 4))
    runs: dict = {(name, ctx): [] for ctx in contexts for name in names}
    for ctx in contexts:
        for r in range(repeats):
            for name in names[r % len(names):] + names[: r % len(names)]:
                runs[(name, ctx)].append(decode_once(bb, methods[name], stream, ctx, new_tokens))
                print(f"bench: {name} context {ctx} run {r + 1}/{repeats}: "
                      f"{runs[(name, ctx)][-1]['decode_s']:.2f} s decode", file=sys.stderr, flush=True)
    return runs


def _result(name: str, ctx: int, runs: list[dict], new_tokens: int, memory: dict | None) -> dict:
    decode = statistics.median(r["decode_s"] for r in runs)
    peak = (memory or {}).get("peak_rss_mb", {}).get(str(ctx))
    return {
        "method": name, "context": ctx, "new_tokens": new_tokens,
        "tokens_per_s": new_tokens / decode, "step_latency_ms": 1000.0 * decode / new_tokens,
        "peak_rss_mb": peak,
        "peak_rss_above_baseline_mb": None if peak is None else peak - memory["baseline_rss_mb"],
        "consolidations": runs[0]["consolidations"], "prompt_memory": runs[0]["prompt_memory"],
        "prefill_s": statistics.median(r["prefill_s"] for r in runs),
        "decode_s_runs": [r["decode_s"] for r in runs],
    }


def ratios(results: list[dict]) -> dict:
    """{"a/b": {context: {tokens_per_s, step_latency, peak_rss, peak_rss_above_baseline}}} for present pairs."""
    by = {(r["method"], r["context"]): r for r in results}
    out = {}
    for a, b in RATIOS:
        table = {}
        for (method, ctx), ra in sorted(by.items(), key=lambda kv: kv[0][1]):
            rb = by.get((b, ctx))
            if method != a or rb is None:
                continue
            table[str(ctx)] = {
                "tokens_per_s": ra["tokens_per_s"] / rb["tokens_per_s"],
                "step_latency": ra["step_latency_ms"] / rb["step_latency_ms"],
                "peak_rss": _ratio(ra["peak_rss_mb"], rb["peak_rss_mb"]),
                "peak_rss_above_baseline": _ratio(ra["peak_rss_above_baseline_mb"], rb["peak_rss_above_baseline_mb"]),
            }
        if table:
            out[f"{a}/{b}"] = table
    return out


def _ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


# ---- peak memory, one process per method ------------------------------------------------------
def peak_memory(args, names: list[str], contexts: list[int], notes: list[str]) -> dict:
    """{method: {"baseline_rss_mb", "peak_rss_mb": {context: MB}, "measure"}}, one subprocess per method.

    The workers run side by side, one torch thread each: they measure memory, not time, and several
    multi-threaded processes on few cores slow each other down badly.
    """
    procs = {}
    for name in names:
        spec = {"model": args.model, "dtype": args.dtype, "method": name, "contexts": contexts,
                "memory": {"flashmem": args.memory, "memgen": args.memgen_memory}.get(name),
                "new_tokens": args.new_tokens, "consolidations": args.consolidations, "data_dir": args.data_dir,
                "threads": 1}
        procs[name] = subprocess.Popen([sys.executable, "-m", "flashmem.bench", "--worker", json.dumps(spec)],
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    print(f"bench: peak memory of {', '.join(names)}, each in its own process ...", file=sys.stderr, flush=True)
    out = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate()
        lines = [ln for ln in stdout.splitlines() if ln.startswith(WORKER_TAG)]
        if proc.returncode != 0 or not lines:
            last = (stderr.strip().splitlines() or [""])[-1]
            notes.append(f"peak memory of {name} not measured: worker exited {proc.returncode}: {last}")
            continue
        out[name] = json.loads(lines[-1][len(WORKER_TAG):])
    return out


def rss_mb() -> float:
    """This process's peak resident set so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def reset_peak_rss() -> bool:
    """Linux: restart the kernel's peak-RSS counter (VmHWM) from the current RSS; False where impossible.

    Needed because ru_maxrss never goes down: it holds the loading spike, and after fork + exec
    even the parent's peak (Linux records the old mm's high-water mark at exec), which hid every
    per-method difference in a first version of this benchmark.
    """
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return _proc_status_mb("VmHWM") is not None
    except OSError:
        return False


def _proc_status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def worker(spec: dict) -> dict:
    """Load and build one method, then per context (ascending): reset the peak, prefill + decode, read it."""
    set_threads(spec.get("threads"))
    bb = load(spec["model"], spec["dtype"])
    memory = None
    if spec["method"] != "vanilla":
        memory = bench_memory(bb, spec["method"], spec["memory"], spec["consolidations"], spec["new_tokens"])
    stream, _ = bench_text(bb.tokenizer, max(spec["contexts"]) + spec["new_tokens"], spec["data_dir"], bb)
    gc.collect()
    resettable = reset_peak_rss()
    baseline = _proc_status_mb("VmRSS") if resettable else rss_mb()
    peaks = {}
    for ctx in sorted(spec["contexts"]):
        resettable = reset_peak_rss()
        decode_once(bb, memory, stream, ctx, spec["new_tokens"])
        peaks[str(ctx)] = _proc_status_mb("VmHWM") if resettable else rss_mb()
    how = ("VmHWM per context after resetting it (/proc/self/clear_refs)" if resettable
           else "ru_maxrss (cannot reset here: includes loading and the parent's peak)")
    return {"method": spec["method"], "baseline_rss_mb": baseline, "peak_rss_mb": peaks, "measure": how}


# ---- output -----------------------------------------------------------------------------------
def _settings(args, bb, methods, contexts, source, notes) -> dict:
    schedule = {name: {"budget": m.config.budget, "min_gap": m.config.min_gap, "trigger": m.config.trigger,
                       "threshold": m.config.threshold, "num_latents": m.config.num_latents,
                       "reprefill": m.config.reprefill} for name, m in methods.items() if m is not None}
    return {
        "model": args.model, "dtype": args.dtype, "contexts": contexts, "new_tokens": args.new_tokens,
        "repeats": args.repeats, "consolidations": args.consolidations, "methods": list(methods),
        "memory": {"flashmem": args.memory or "untrained", "memgen": args.memgen_memory or "untrained"},
        "prompt_source": source,
        "schedule": ("memory at the prompt end, then --consolidations more, one every new_tokens // "
                     "(consolidations + 1) steps, identical for flashmem and memgen: trigger monitor with "
                     f"threshold {SCHEDULE_THRESHOLD} (entropy >= 0, so budget and gap decide); memgen's "
                     "delimiter trigger is overridden for the benchmark"),
        "schedule_config": schedule,
        "decoding": "teacher-forced on the text after the prompt, batch 1, so each method decodes exactly new_tokens",
        "timing": ("one process; per context, every repeat runs each method once, order rotated; median; "
                   "decode time runs from the end of prefill to the last token, consolidations included; "
                   "step_latency_ms = decode time / new_tokens"),
        "peak_memory": ("peak resident set of a subprocess running one method, per context (ascending): "
                        "Linux VmHWM reset before each context, else ru_maxrss; baseline_rss_mb is the "
                        "resident set after loading the model and building the memory"),
        "notes": notes,
        "machine": machine_info(),
    }


def _worker_main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "--worker":
        print("usage: python -m flashmem.bench --worker SPEC_JSON (internal to `flashmem bench`)", file=sys.stderr)
        return 2
    print(WORKER_TAG + json.dumps(worker(json.loads(argv[1]))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
