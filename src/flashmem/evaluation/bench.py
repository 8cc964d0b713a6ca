"""`flashmem bench`: the paper's efficiency table (vanilla vs FlashMem vs MemGen), measured here.

For each schedule, batch size and context length, a prompt of exactly that many tokens (of real text
when GSM8K is at hand) is decoded for N tokens by every method, teacher-forced on the text that
follows it, so each method decodes exactly N tokens with greedy decoding's per-step work. Timing runs
all methods in this one process, alternating within each repeat (the order rotates), after a warm-up
that includes a consolidation; min/median/max over the repeats are kept. Schedules (named in the output):

- paper: the paper's efficiency setting as secondary sources describe it: 8 rounds of 32 text tokens,
  each preceded by a K=8 consolidation (memory at the prompt end, then after every 32 tokens);
- calibrated: each memory's own policy as users run it (FlashMem's monitor with its threshold,
  MemGen's delimiter rule); the monitor's trigger rate is reported;
- fixed: memory at the prompt end plus --consolidations more, evenly spaced.
The method `transformers` (opt-in) is transformers' own greedy `generate` on its static cache, compiled as
transformers compiles it under --compile: plain decoding as a user would run it without flashmem, timed
the same way (decode from the first token's logits to the last token) on the same prompt and length.
Under paper and fixed both memories fire at the same steps (FlashMem's monitor still runs every step,
with a threshold no entropy is below, so its cost is counted). Memory: peak CUDA allocation on a
GPU (in process, reset before each run); on the CPU the growth of the resident set above the loaded
model's baseline, measured in one subprocess per method (bench_memory.py).
"""
from __future__ import annotations

import json
import math
import statistics
import sys
import time
from dataclasses import MISSING, asdict, dataclass, replace

import torch

from ..config import GenerationConfig, MemoryConfig, ModelOptions, check, option
from ..data.datasets import load_examples
from ..decoding.generation import generate
from ..errors import FlashmemError
from ..files import atomic_write_text
from ..memory.base import LatentMemory
from ..memory.registry import build_memory, default_config, load_memory
from ..models.backbone import Backbone
from ..models.loader import load_backbone
from ..models.runtime import set_threads
from ..training.thresholds import needs_threshold, prompt_threshold
from .bench_memory import WORKER_TAG, cuda_peak, proc_status_mb, reset_peak_rss, rss_mb, run_workers
from .report import machine_info, plot_latency

SCHEDULES = ("paper", "calibrated", "fixed")
BENCH_METHODS = ("vanilla", "flashmem", "memgen")
PEER = "transformers"  # transformers' own generate on its static cache (compiled with --compile): the peer
SCHEDULE_THRESHOLD = -1.0  # below any entropy: the budget and gap alone decide when memory is made
PAPER_ROUND = 32  # text tokens per round in the paper's setting
WARMUP_CONTEXT = 1024  # the warm-up decodes at most this much context (the first calls' costs do not grow with it)


def _ints(text: str, what: str, least: int) -> list[int]:
    try:
        values = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise FlashmemError(f"--{what} must be comma-separated integers, got {text!r}") from None
    if not values or values[0] < least:
        raise FlashmemError(f"--{what} must be integers >= {least}, got {text!r}")
    return values


def _names(text: str, what: str, known: tuple[str, ...]) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [n for n in names if n not in known]
    if not names or unknown:
        raise FlashmemError(f"--{what} must be a comma-separated subset of {', '.join(known)}, got {text!r}")
    return list(dict.fromkeys(names))


@dataclass(frozen=True, kw_only=True)
class BenchConfig(ModelOptions):
    """Everything `flashmem bench` needs; stored in its JSON."""

    memory: str | None = option(None, "FlashMem memory folder (default: an untrained one; speed does not depend on training)")
    memgen_memory: str | None = option(None, "MemGen memory folder (default: an untrained one)")
    methods: str = option(",".join(BENCH_METHODS), f"comma-separated methods (vanilla must be among them; "
                          f"{PEER}: transformers' own generate, the peer)")
    contexts: str = option("1024,4096", "prompt lengths in tokens, comma-separated")
    new_tokens: int = option(256, "tokens decoded per run")
    repeats: int = option(5, "timed runs per method, context and batch size")
    batch_sizes: str = option("1", "batch sizes, comma-separated (each row decodes the same prompt)")
    schedules: str = option("paper,calibrated,fixed", f"comma-separated schedules: {', '.join(SCHEDULES)}")
    consolidations: int = option(2, "fixed schedule: consolidations after the prompt-end memory, evenly spaced")
    data_dir: str | None = option(None, "folder with gsm8k/test.jsonl, the prompt text (default $FLASHMEM_DATA_DIR, then the hub)")
    memory_workers: bool = option(True, "CPU: measure memory growth in one subprocess per method")
    static_cache: bool = option(False, "decode every method with a preallocated cache (GenerationConfig.static_cache)")
    compile: bool = option(False, "decode every method's steps as one compiled graph on a preallocated cache "
                           "(GenerationConfig.compile); the warm-up run compiles")
    out: str = option(MISSING, "results JSON", metavar="FILE.json")
    plot: str | None = option(None, "plot per-step latency against context length", metavar="FILE.png")

    def __post_init__(self) -> None:
        super().__post_init__()
        check([(self.new_tokens >= 2, f"--new-tokens must be >= 2, got {self.new_tokens}"),
               (self.repeats >= 1, f"--repeats must be >= 1, got {self.repeats}"),
               (self.consolidations >= 0, f"--consolidations must be >= 0, got {self.consolidations}"),
               ("vanilla" in self.method_list, "--methods must include vanilla (every ratio is against it)")],
              "bench config")
        _ = self.context_list, self.batch_list, self.schedule_list  # parse now: bad lists fail before any model loads

    @property
    def context_list(self) -> list[int]:
        return _ints(self.contexts, "contexts", 8)

    @property
    def batch_list(self) -> list[int]:
        return _ints(self.batch_sizes, "batch-sizes", 1)

    @property
    def schedule_list(self) -> list[str]:
        return _names(self.schedules, "schedules", SCHEDULES)

    @property
    def method_list(self) -> list[str]:
        return _names(self.methods, "methods", BENCH_METHODS + (PEER,))


def bench(cfg: BenchConfig) -> dict:
    """Time every method under every schedule, measure its memory; return (and write) the report."""
    bb = load_backbone(cfg.model, dtype=cfg.dtype, device=cfg.device)
    stream, source = bench_text(bb, max(cfg.context_list) + cfg.new_tokens, cfg.data_dir)
    results, notes = [], []
    for schedule in cfg.schedule_list:
        methods = bench_methods(bb, cfg, schedule, stream, notes)
        check_room(bb, cfg, methods)
        for batch in cfg.batch_list:
            # Written after each part, so a run stopped by a time limit keeps what it measured.
            results += time_methods(bb, methods, stream, cfg, schedule, batch, lambda done: write_report(
                cfg, bb, source, notes + ["partial: the run had not finished"], results + done))
    if bb.device.type == "cpu" and cfg.memory_workers:
        notes += cpu_peak_memory(cfg, results)
    report = write_report(cfg, bb, source, notes, results)
    if cfg.plot:
        plot_latency(cfg.plot, results)
    return report


def write_report(cfg: BenchConfig, bb: Backbone, source: str, notes: list[str], results: list[dict]) -> dict:
    report = {"settings": settings(cfg, bb, source, notes), "results": results, "ratios": ratios(results)}
    atomic_write_text(cfg.out, json.dumps(report, indent=2) + "\n")
    return report


def bench_text(bb: Backbone, n_tokens: int, data_dir: str | None) -> tuple[list[int], str]:
    """At least n_tokens ids of real text: GSM8K test questions joined by blank lines, else vocabulary cycling."""
    try:
        examples, report = load_examples("gsm8k", "test", data_dir)
    except FlashmemError:
        examples, report = [], None
    if examples:
        ids = bb.tokenizer("\n\n".join(ex.question for ex in examples), add_special_tokens=False)["input_ids"]
        source = f"GSM8K test questions joined by blank lines ({report.path})"
    else:
        special = set(bb.tokenizer.all_special_ids)
        ids = [i for i in range(bb.vocab_size) if i not in special]
        source = "token ids cycled over the vocabulary (no GSM8K data found)"
    if len(ids) < n_tokens:
        ids = ids * math.ceil(n_tokens / len(ids))
        source += ", repeated"
    return ids[:n_tokens], source


# ---- the methods and their schedules ----------------------------------------------------------
def bench_methods(bb: Backbone, cfg: BenchConfig, schedule: str, stream: list[int], notes: list[str]) -> dict:
    """{method: (memory or None, policy or None)} under one schedule."""
    methods: dict = {}
    for name in cfg.method_list:
        if name in ("vanilla", PEER):
            methods[name] = (None, None)
            continue
        memory = bench_memory(bb, name, cfg.memory if name == "flashmem" else cfg.memgen_memory)
        policy = schedule_policy(memory.config, schedule, cfg.new_tokens, cfg.consolidations)
        if needs_threshold(policy):  # an untrained memory under its own policy: tau from the prompt's entropies
            ids = torch.tensor([stream[: cfg.context_list[0]]], device=bb.device)
            policy = replace(policy, threshold=prompt_threshold(bb, ids, torch.ones_like(ids), policy))
            notes.append(f"{schedule}: {name} has no calibrated threshold; tau {policy.threshold:.3f} is the "
                         f"{policy.percentile:g}th percentile of the first prompt's own entropies")
        methods[name] = (memory, policy)
    return methods


def bench_memory(bb: Backbone, method: str, folder: str | None) -> LatentMemory:
    """A loaded memory, or an untrained one of the method (the same on every run)."""
    if folder:
        memory = load_memory(folder, bb)
        if memory.config.method != method:
            raise FlashmemError(f"{folder} is a {memory.config.method} memory, not {method}")
        return memory.eval()
    torch.manual_seed(0)
    return build_memory(bb, default_config(method)).eval()


def schedule_policy(base: MemoryConfig, schedule: str, new_tokens: int, consolidations: int) -> MemoryConfig:
    """The insertion policy a memory runs under a schedule (calibrated: its own)."""
    if schedule == "calibrated":
        return base
    if schedule == "paper":  # prompt-end memory + one after every PAPER_ROUND tokens that has text after it
        budget, gap = math.ceil(new_tokens / PAPER_ROUND) - 1, PAPER_ROUND
    else:
        budget, gap = consolidations, max(1, new_tokens // (consolidations + 1))
    # FlashMem keeps its monitor running (its real cost); MemGen has none, so it fires on the schedule alone.
    trigger = "monitor" if base.method == "flashmem" else "always"
    return replace(base, trigger=trigger, threshold=SCHEDULE_THRESHOLD if trigger == "monitor" else base.threshold,
                   budget=budget, min_gap=gap, prompt_memory=True, trigger_memory=budget > 0)


def check_room(bb: Backbone, cfg: BenchConfig, methods: dict) -> None:
    latents = max((p.num_latents * (1 + p.budget) for _, p in methods.values() if p is not None), default=0)
    longest = bb.max_positions - cfg.new_tokens - latents
    if max(cfg.context_list) > longest:
        raise FlashmemError(f"context {max(cfg.context_list)} does not fit: the model has {bb.max_positions} positions, "
                            f"so with {cfg.new_tokens} new tokens and {latents} latents the longest is {longest}")


# ---- timing -----------------------------------------------------------------------------------
class _PrefillClock(Backbone):
    """The same backbone, noting when its first forward (in generate, the prefill) has finished.

    Only that one waits for the device: a wait after every decoding step would slow the methods
    that enqueue more work per step (the monitor) more than the others."""

    def __init__(self, bb: Backbone):
        self.__dict__.update(bb.__dict__)
        self.marks: list[float] = []

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        if not self.marks:
            _sync(self.device)
            self.marks.append(time.perf_counter())
        return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":  # GPU work is asynchronous: a clock read must wait for it
        torch.cuda.synchronize(device)


def decode_once(bb: Backbone, memory: LatentMemory | None, policy: MemoryConfig | None, stream: list[int],
                context: int, new_tokens: int, batch: int = 1, monitor: bool = False, static_cache: bool = False,
                compile: bool = False) -> dict:
    """Prefill `context` tokens (batch copies), decode `new_tokens` forced to the following text; seconds of
    each phase. monitor=True runs the entropy every step even without memory (the monitor's own cost);
    static_cache: a preallocated cache; compile: the compiled step (on one)."""
    ids = torch.tensor([stream[:context]] * batch, device=bb.device)
    forced = torch.tensor([stream[context: context + new_tokens]] * batch, device=bb.device)
    clock = _PrefillClock(bb)
    _sync(bb.device)
    start = time.perf_counter()
    with cuda_peak(bb.device) as peak:
        result = generate(clock, ids, torch.ones_like(ids), memory,
                          GenerationConfig(static_cache=static_cache, compile=compile), forced=forced,
                          monitor=monitor, policy=policy)
        _sync(bb.device)
    end = time.perf_counter()
    trace = result.traces[0]
    fired = [e > policy.threshold for e in trace.entropy] if policy is not None and policy.trigger == "monitor" else []
    return {"prefill_s": clock.marks[0] - start, "decode_s": end - clock.marks[0],
            "consolidations": len(trace.consolidations), "prompt_memory": trace.prompt_memory,
            "trigger_rate": sum(fired) / len(fired) if fired else None, **peak}


def run_method(bb: Backbone, name: str, method: tuple, stream: list[int], context: int, cfg: BenchConfig,
               batch: int = 1) -> dict:
    """One timed run of a method (decode_once, or the peer's generate)."""
    if name == PEER:
        return decode_peer(bb, stream, context, cfg.new_tokens, batch, cfg.compile)
    return decode_once(bb, *method, stream, context, cfg.new_tokens, batch, static_cache=cfg.static_cache,
                       compile=cfg.compile)


def decode_peer(bb: Backbone, stream: list[int], context: int, new_tokens: int, batch: int, compiled: bool) -> dict:
    """transformers' generate of new_tokens greedy tokens after `context` tokens; seconds of each phase."""
    ids = torch.tensor([stream[:context]] * batch, device=bb.device)
    marks: list[float] = []

    def first_step() -> None:
        _sync(bb.device)
        marks.append(time.perf_counter())
    _sync(bb.device)
    start = time.perf_counter()
    with cuda_peak(bb.device) as peak:
        bb.library_generate(ids, torch.ones_like(ids), new_tokens, compiled, first_step)
        _sync(bb.device)
    end = time.perf_counter()
    return {"prefill_s": marks[0] - start, "decode_s": end - marks[0], "consolidations": 0, "prompt_memory": False,
            "trigger_rate": None, **peak}


def time_methods(bb: Backbone, methods: dict, stream: list[int], cfg: BenchConfig, schedule: str, batch: int,
                 checkpoint=None) -> list[dict]:
    """Per context, each repeat runs every method once, order rotated; one result per (method, context).

    checkpoint(results so far) is called after each context."""
    names = list(methods)
    # A whole warm-up run: first-call costs (allocator, kernels, a consolidation) stay out. On a GPU the
    # allocator's blocks grow with the context, so it warms up at the first context itself (a 64k run
    # after a 1k warm-up was measured 2-3x slower than the next ones on an H200).
    warm = cfg.context_list[0] if bb.device.type == "cuda" else min(cfg.context_list[0], WARMUP_CONTEXT)
    for name in names:
        run_method(bb, name, methods[name], stream, warm, cfg, batch)
    results = []
    for ctx in cfg.context_list:
        runs: dict[str, list[dict]] = {name: [] for name in names}
        for r in range(cfg.repeats):
            for name in names[r % len(names):] + names[: r % len(names)]:
                runs[name].append(run_method(bb, name, methods[name], stream, ctx, cfg, batch))
                print(f"bench: {schedule} batch {batch} {name} context {ctx} run {r + 1}/{cfg.repeats}: "
                      f"{runs[name][-1]['decode_s']:.2f} s decode", file=sys.stderr, flush=True)
        results += [summarize_runs(name, schedule, ctx, batch, cfg.new_tokens, runs[name]) for name in names]
        if checkpoint is not None:
            checkpoint(results)
    return results


def summarize_runs(name: str, schedule: str, ctx: int, batch: int, new_tokens: int, runs: list[dict]) -> dict:
    decode = [r["decode_s"] for r in runs]
    latency = sorted(1000.0 * d / new_tokens for d in decode)
    peaks = [r["cuda_peak_mb"] for r in runs if r.get("cuda_peak_mb") is not None]
    above = [r["cuda_above_baseline_mb"] for r in runs if r.get("cuda_above_baseline_mb") is not None]
    rates = [r["trigger_rate"] for r in runs if r["trigger_rate"] is not None]
    return {
        "schedule": schedule, "method": name, "context": ctx, "batch": batch, "new_tokens": new_tokens,
        "tokens_per_s": batch * new_tokens / statistics.median(decode),
        "step_latency_ms": {"min": latency[0], "median": statistics.median(latency), "max": latency[-1]},
        "decode_s_runs": decode, "prefill_s": statistics.median(r["prefill_s"] for r in runs),
        "consolidations": runs[0]["consolidations"], "prompt_memory": runs[0]["prompt_memory"],
        "trigger_rate": statistics.mean(rates) if rates else None,
        "peak_mb": max(peaks) if peaks else None, "peak_above_baseline_mb": max(above) if above else None,
        "memory_measure": "cuda max_memory_allocated" if peaks else None,
    }


def ratios(results: list[dict]) -> list[dict]:
    """FlashMem against vanilla, MemGen and the peer, and vanilla against the peer, on each (schedule, batch,
    context) they share."""
    by = {(r["schedule"], r["batch"], r["context"], r["method"]): r for r in results}
    out = []
    for (schedule, batch, ctx, method), fm in sorted(by.items()):
        if method not in ("flashmem", "vanilla"):
            continue
        for other in ("vanilla", "memgen", PEER) if method == "flashmem" else (PEER,):
            ref = by.get((schedule, batch, ctx, other))
            if ref is not None:
                out.append({"pair": f"{method}/{other}", "schedule": schedule, "batch": batch, "context": ctx,
                            "tokens_per_s": fm["tokens_per_s"] / ref["tokens_per_s"],
                            "step_latency": fm["step_latency_ms"]["median"] / ref["step_latency_ms"]["median"],
                            "peak": _ratio(fm["peak_mb"], ref["peak_mb"]),
                            "peak_above_baseline": _ratio(fm["peak_above_baseline_mb"], ref["peak_above_baseline_mb"])})
    return out


def _ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def settings(cfg: BenchConfig, bb: Backbone, source: str, notes: list[str]) -> dict:
    return {
        "config": asdict(cfg), "model": cfg.model, "dtype": str(bb.dtype).removeprefix("torch."),
        "device": str(bb.device), "device_name": torch.cuda.get_device_name(bb.device) if bb.device.type == "cuda" else None,
        "prompt_source": source, "notes": notes, "machine": machine_info(),
        "decode_path": ("compiled step on a preallocated cache (torch.compile, one graph)" if cfg.compile else
                        "eager steps on a preallocated cache" if cfg.static_cache else "eager steps on a growing cache"),
        "schedules": {"paper": f"prompt-end memory, then one consolidation after every {PAPER_ROUND} text tokens "
                               "(8 rounds of K=8 latents + 32 tokens in 256 new tokens)",
                      "calibrated": "each memory's own policy (FlashMem: monitor with its threshold; MemGen: delimiters)",
                      "fixed": "prompt-end memory, then --consolidations more, one every new_tokens // (n + 1) steps"},
        "timing": ("one process; per context, every repeat runs each method once, order rotated, after a warm-up run; "
                   "decode time from the end of prefill to the last token, consolidations included; "
                   "step latency = decode time / new tokens; tokens/s = batch * new tokens / median decode time"),
    }


# ---- CPU memory: one subprocess per method ------------------------------------------------------
def cpu_peak_memory(cfg: BenchConfig, results: list[dict]) -> list[str]:
    """Fill peak_mb / peak_above_baseline_mb of the first schedule's batch-1 rows from one worker per method.

    The workers run side by side, one torch thread each: they measure memory, not time.
    """
    schedule = cfg.schedule_list[0]
    specs = {name: {"config": asdict(cfg), "method": name, "schedule": schedule} for name in cfg.method_list}
    print(f"bench: memory of {', '.join(specs)}, each in its own process ...", file=sys.stderr, flush=True)
    measured, notes = run_workers("flashmem.evaluation.bench", specs)
    for row in results:
        worker = measured.get(row["method"])
        if worker is None or row["schedule"] != schedule or row["batch"] != 1:
            continue
        row["peak_mb"] = worker["peak_mb"][str(row["context"])]
        row["peak_above_baseline_mb"] = row["peak_mb"] - worker["baseline_mb"]
        row["memory_measure"] = worker["measure"]
    return notes


def worker(spec: dict) -> dict:
    """Load and build one method, then per context (ascending): reset the peak, prefill + decode, read it."""
    set_threads(1)
    cfg = BenchConfig(**{k: v for k, v in spec["config"].items()})
    bb = load_backbone(cfg.model, dtype=cfg.dtype, device="cpu")
    stream, _ = bench_text(bb, max(cfg.context_list) + cfg.new_tokens, cfg.data_dir)
    one = replace(cfg, methods=spec["method"] if spec["method"] == "vanilla" else f"vanilla,{spec['method']}")
    memory, policy = bench_methods(bb, one, spec["schedule"], stream, [])[spec["method"]]
    resettable = reset_peak_rss()
    baseline = proc_status_mb("VmRSS") if resettable else rss_mb()
    peaks = {}
    for ctx in cfg.context_list:
        resettable = reset_peak_rss()
        run_method(bb, spec["method"], (memory, policy), stream, ctx, cfg)
        peaks[str(ctx)] = proc_status_mb("VmHWM") if resettable else rss_mb()
    how = ("cpu VmHWM per context (reset through /proc/self/clear_refs), subprocess per method; above the "
           "resident set after loading the model and building the memory" if resettable
           else "cpu ru_maxrss (cannot reset here: includes loading)")
    return {"method": spec["method"], "baseline_mb": baseline, "peak_mb": peaks, "measure": how}


def _worker_main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "--worker":
        print("usage: python -m flashmem.evaluation.bench --worker SPEC_JSON (internal to `flashmem bench`)", file=sys.stderr)
        return 2
    print(WORKER_TAG + json.dumps(worker(json.loads(argv[1]))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
