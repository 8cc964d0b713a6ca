"""`flashmem demo`: the main job. On the generated recall task (offline, anywhere) it asks the question
the project exists for: does a latent memory carry a document the cache no longer holds?

It trains FlashMem (the paper's recipe, document in view), the tuned soft-prompt control and, for the
cut, FlashMem made before the question from the document, which is then cut from the cache (only the
attention sinks and the question's window remain); every memory trains for the same number of steps.
It calibrates, evaluates on held-out questions (the plain model, each memory, FlashMem with another
document's memory, and the cut: plain, and FlashMem's), benchmarks the cost, and writes a report
folder whose first lines state the finding with its numbers (report.md, plots, raw JSON).
`--data gsm8k` (or any set) runs the same job without the cut; `--memgen` adds the MemGen-style memory.

Each stage calls a library job (`train`, `calibrate`, `evaluate`, `bench`) with its typed config; a
finished stage is recorded in OUT/demo_state.json and every job resumes its own partial work, so an
interrupted demo picks up where it stopped when run again with the same settings.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from ..config import ModelOptions, check, option
from ..data.datasets import load_examples
from ..data.recall import is_recall_spec, parse_spec
from ..errors import FlashmemError
from ..evaluation.bench import BenchConfig, bench
from ..evaluation.evaluate import EvalConfig, evaluate
from ..files import atomic_write_text
from ..memory.registry import default_config
from ..training.calibrate import CalibrateConfig, calibrate
from ..training.train import MEMORY_LR, SOFTPROMPT_LR, TrainConfig, train
from .commands import GenerateCommand, run_generate
from .demo_report import CUT, write_report

DEFAULT_DATA = "recall:context=128,facts=4"
# The demo's data when --data cannot be read: the generated recall task runs anywhere, offline.
FALLBACK_DATA = DEFAULT_DATA
# The cut's recipe (results/eviction/run.sh): a new document every step asked 4 of its facts, the memory
# made before the question; this rate is the one its runs use.
CUT_LR = 1e-3


@dataclass(frozen=True, kw_only=True)
class DemoConfig(ModelOptions):
    """Everything `flashmem demo` needs."""

    out: str = option("demo_out", "report folder")
    data: str = option(DEFAULT_DATA, "training set (its train split): recall[:...] (with the cut), gsm8k, ...")
    eval_data: str | None = option(None, "held-out set (default: --data, split test)")
    eval_split: str = option("test", "held-out split")
    eval_limit: int = option(100, "held-out questions per method")
    mawps_limit: int = option(0, "also evaluate on MAWPS: N questions (-1: all)")
    data_dir: str | None = option(None, "folder of named datasets, NAME/SPLIT.jsonl (default $FLASHMEM_DATA_DIR, then the hub)")
    # 70 steps, 100 questions a run and 2 bench repeats fit the ~38 minutes of the GSM8K demo this replaced,
    # set-up included, on a quiet 2-core CPU (the README gives the measured time); 100 steps took 45.7 minutes
    steps: int = option(70, "training steps of every memory (the same for all)")
    batch_size: int = option(4, "training examples per step")
    lr: float = option(MEMORY_LR, "peak learning rate of FlashMem and MemGen (document in view)")
    softprompt_lr: float = option(SOFTPROMPT_LR, "peak learning rate of the soft-prompt control (see train.py)")
    cut_lr: float = option(CUT_LR, "peak learning rate of FlashMem through the cut")
    prompt_window: int = option(26, "the cut: prompt tokens kept after the document is cut (the question); 26 holds "
                                "the whole question and never the answer at 128-token documents with SmolLM2's "
                                "chat template (results/recall/window_check.py)")
    memgen: bool = option(False, "also train and evaluate the MemGen-style memory (slow: it re-reads the context)")
    max_new_tokens: int | None = option(None, "tokens per evaluated answer (default 24 on recall, else 256)")
    calibrate_limit: int = option(32, "validation prompts for calibration")
    contexts: str = option("256,512,1024", "benchmark contexts")
    bf16: bool = option(False, "bf16 autocast for training")

    def __post_init__(self) -> None:
        super().__post_init__()
        check([(self.steps >= 1, f"--steps must be >= 1, got {self.steps}"),
               (self.eval_limit >= 1, f"--eval-limit must be >= 1, got {self.eval_limit}"),
               (self.prompt_window >= 1, f"--prompt-window must be >= 1, got {self.prompt_window}")], "demo config")

    def new_tokens(self, data: str) -> int:
        """Tokens per evaluated answer on `data`: a recall answer is one short sentence."""
        if self.max_new_tokens is not None:
            return self.max_new_tokens
        return 24 if has_cut(data) else 256


class Demo:
    """The stages, each skipped when OUT/demo_state.json says it finished."""

    def __init__(self, cfg: DemoConfig):
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.state_path = self.out / "demo_state.json"
        self.state = json.loads(self.state_path.read_text()) if self.state_path.is_file() else {"done": []}
        self.notes: list[str] = self.state.get("notes", [])
        self.model = dict(model=cfg.model, dtype=cfg.dtype, device=cfg.device)

    def stage(self, name: str, job: Callable[[], object], config: object) -> None:
        if name in self.state["done"]:
            print(f"[demo] {name}: done already", file=sys.stderr)
            return
        print(f"[demo] {name}: {type(config).__name__}({_changed(config)})", file=sys.stderr)
        start = time.time()
        status = job()
        if isinstance(status, int) and status != 0:
            raise FlashmemError(f"demo stage {name!r} stopped (exit {status}); rerun the demo to resume")
        self.state["done"].append(name)
        self.state.setdefault("seconds", {})[name] = round(time.time() - start, 1)
        self.save()

    def save(self) -> None:
        self.state["notes"] = self.notes
        atomic_write_text(self.state_path, json.dumps(self.state, indent=2) + "\n")

    def path(self, *parts: str) -> str:
        return str(self.out.joinpath(*parts))


def _changed(config: object) -> str:
    """The fields of a config that differ from their defaults, for the log line."""
    values = asdict(config)
    defaults = {f: getattr(type(config), f, None) for f in values}
    return ", ".join(f"{k}={v!r}" for k, v in values.items() if v != defaults.get(k) and not isinstance(v, dict))


def choose_data(demo: Demo) -> tuple[str, str, str]:
    """(training data, held-out data, held-out split). Without --data's set (no local copy, no hub), the
    generated recall task, which runs anywhere and needs the context (plain arithmetic would score 0%)."""
    cfg = demo.cfg
    try:
        _, report = load_examples(cfg.data, "train", cfg.data_dir, limit=1)
        eval_data = cfg.eval_data or cfg.data
        load_examples(eval_data, cfg.eval_split, cfg.data_dir, limit=1)
        demo.state["data_used"] = f"{cfg.data} ({report.path})"
        return cfg.data, eval_data, cfg.eval_split
    except FlashmemError as err:
        note = (f"{cfg.data} could not be read ({err}); this demo uses the generated recall task instead "
                f"({FALLBACK_DATA}: find one 4-digit code among key-value facts in filler text), so its numbers "
                f"are recall numbers, not {cfg.data} numbers")
        print(f"[demo] WARNING: {note}", file=sys.stderr)
        if note not in demo.notes:
            demo.notes.append(note)
    demo.state["data_used"] = f"{FALLBACK_DATA} (generated recall task; {cfg.data} was not found)"
    return FALLBACK_DATA, FALLBACK_DATA, "test"


def trained(demo: Demo, data: str) -> list[str]:
    """The memories this demo trains: the cut's only on recall, MemGen only when asked for."""
    return ["flashmem", "softprompt"] + (["memgen"] if demo.cfg.memgen else []) + ([CUT] if has_cut(data) else [])


def has_cut(data: str) -> bool:
    return is_recall_spec(data.strip().lower())


def train_stages(demo: Demo, data: str) -> None:
    cfg = demo.cfg
    for name in trained(demo, data):
        out = demo.path("memories", name)
        resume = Path(out, "checkpoint").exists() and f"train-{name}" not in demo.state["done"]
        common = dict(**demo.model, data=data, data_dir=cfg.data_dir, out=out, steps=cfg.steps, val_size=32,
                      batch_size=cfg.batch_size, eval_every=max(cfg.steps // 4, 1), save_every=max(cfg.steps // 8, 1),
                      bf16=cfg.bf16, resume=resume)
        if name == CUT:
            facts = parse_spec(data.strip().lower()).facts
            memory = default_config("flashmem", prompt_window=cfg.prompt_window, query_agnostic=True,
                                    trigger_memory=False)
            config = TrainConfig(**common, method="flashmem", lr=cfg.cut_lr, stream=True, memory=memory,
                                 questions_per_document=min(facts, cfg.batch_size), max_length=1024)
        else:
            config = TrainConfig(**common, method=name, lr=cfg.softprompt_lr if name == "softprompt" else cfg.lr,
                                 max_length=1024, on_bad_data="skip")
        demo.stage(f"train-{name}", lambda: train(config), config)


def calibrate_stages(demo: Demo, data: str) -> None:
    for method in ("flashmem", "softprompt"):
        config = CalibrateConfig(**demo.model, data=data, data_dir=demo.cfg.data_dir,
                                 memory=demo.path("memories", method), val_size=32, limit=demo.cfg.calibrate_limit,
                                 max_new_tokens=min(128, demo.cfg.new_tokens(data)),
                                 hist=demo.path("entropy_histogram.png") if method == "flashmem" else None)
        demo.stage(f"calibrate-{method}", lambda: calibrate(config), config)


def eval_runs(demo: Demo, data: str) -> dict[str, dict]:
    """{run name: EvalConfig fields} of the held-out runs: in view, then (recall) through the cut."""
    window = demo.cfg.prompt_window
    runs = {"vanilla": dict(method="vanilla"), "flashmem": dict(method="flashmem", memory="flashmem"),
            "flashmem_foreign": dict(method="flashmem", memory="flashmem", ablate="foreign-context"),
            "softprompt": dict(method="softprompt", memory="softprompt")}
    if demo.cfg.memgen:
        runs["memgen"] = dict(method="memgen", memory="memgen")
    if has_cut(data):
        runs.update({"vanilla_cut": dict(method="vanilla", prompt_window=window),
                     CUT: dict(method="flashmem", memory=CUT),
                     f"{CUT}_foreign": dict(method="flashmem", memory=CUT, ablate="foreign-context")})
    return runs


def eval_stages(demo: Demo, data: str, split: str, tag: str, limit: int) -> dict[str, str]:
    outs = {}
    for name, fields in eval_runs(demo, data).items():
        out = demo.path("eval", f"{tag}_{name}.json")
        if "memory" in fields:
            fields = {**fields, "memory": demo.path("memories", fields["memory"])}
        config = EvalConfig(**demo.model, data=data, split=split, data_dir=demo.cfg.data_dir, out=out,
                            max_new_tokens=demo.cfg.new_tokens(data), limit=limit if limit > 0 else None, **fields)
        demo.stage(f"eval-{tag}-{name}", lambda: evaluate(config), config)
        outs[name] = out
    return outs


def trace_stage(demo: Demo, data: str, split: str) -> None:
    """Entropy trace of one held-out answer with the trained FlashMem memory."""
    if "trace" in demo.state["done"]:
        return
    question = load_examples(data, split, demo.cfg.data_dir, limit=1)[0][0].question
    config = GenerateCommand(**demo.model, prompt=question, memory=demo.path("memories", "flashmem"),
                             max_new_tokens=demo.cfg.new_tokens(data), trace=demo.path("trace.json"),
                             plot=demo.path("entropy_trace.png"))
    demo.stage("trace", lambda: run_generate(config), config)


def bench_stage(demo: Demo) -> None:
    """The cost of each method's decoding. Without a trained MemGen its cost is an untrained one's (the same
    computation: speed does not depend on the weights)."""
    memgen = demo.path("memories", "memgen") if demo.cfg.memgen else None
    config = BenchConfig(**demo.model, data_dir=demo.cfg.data_dir, memory=demo.path("memories", "flashmem"),
                         memgen_memory=memgen, contexts=demo.cfg.contexts, new_tokens=64,
                         repeats=2, schedules="paper", out=demo.path("bench.json"),
                         plot=demo.path("latency_vs_context.png"))
    demo.stage("bench", lambda: bench(config), config)


def run_demo(cfg: DemoConfig) -> int:
    demo = Demo(cfg)
    start = time.time()
    train_data, eval_data, eval_split = choose_data(demo)
    demo.save()
    train_stages(demo, train_data)
    calibrate_stages(demo, train_data)
    evals = {"heldout": eval_stages(demo, eval_data, eval_split, "heldout", cfg.eval_limit)}
    if cfg.mawps_limit:
        evals["mawps"] = eval_stages(demo, "mawps", "test", "mawps", cfg.mawps_limit)
    trace_stage(demo, eval_data, eval_split)
    bench_stage(demo)
    report = write_report(demo.out, evals, demo.notes, demo.state, asdict(cfg))
    print(f"[demo] report: {report} ({(time.time() - start) / 60:.1f} min this run)", file=sys.stderr)
    return 0
