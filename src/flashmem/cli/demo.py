"""`flashmem demo`: the main job. Train FlashMem, a MemGen-style memory and the soft-prompt control with
the same budget, calibrate, evaluate all four methods on held-out questions, benchmark the cost, and
write a report folder (report.md, plots, raw JSON).

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
from ..errors import FlashmemError
from ..evaluation.bench import BenchConfig, bench
from ..evaluation.evaluate import EvalConfig, evaluate
from ..files import atomic_write_text
from ..training.calibrate import CalibrateConfig, calibrate
from ..training.train import MEMORY_LR, SOFTPROMPT_LR, TrainConfig, train
from .commands import GenerateCommand, run_generate
from .demo_report import write_report

TRAINED = ("flashmem", "softprompt", "memgen")
# The demo's data when --data cannot be read: short enough to train on a laptop CPU in minutes.
FALLBACK_DATA = "recall:context=512,facts=16"
EVALUATED = ("vanilla", "flashmem", "memgen", "softprompt")


@dataclass(frozen=True, kw_only=True)
class DemoConfig(ModelOptions):
    """Everything `flashmem demo` needs."""

    out: str = option("demo_out", "report folder")
    minutes: float = option(20.0, "sizes training (each memory trains for a share of it); calibration, evaluation "
                             "and the benchmark come on top (README: the whole demo's measured time)")
    data: str = option("gsm8k", "training set (its train split)")
    eval_data: str | None = option(None, "held-out set (default: --data, split test)")
    eval_split: str = option("test", "held-out split")
    eval_limit: int = option(40, "held-out questions per method")
    mawps_limit: int = option(0, "also evaluate on MAWPS: N questions (-1: all)")
    data_dir: str | None = option(None, "folder of named datasets, NAME/SPLIT.jsonl (default $FLASHMEM_DATA_DIR, then the hub)")
    steps: int | None = option(None, "training steps per method (default: from --minutes)")
    step_seconds: float = option(10.0, "expected seconds per training step, used to size --steps from --minutes")
    batch_size: int = option(4, "training examples per step")
    lr: float = option(MEMORY_LR, "peak learning rate of FlashMem and MemGen")
    softprompt_lr: float = option(SOFTPROMPT_LR, "peak learning rate of the soft-prompt control (see train.py)")
    max_new_tokens: int = option(256, "tokens per evaluated answer")
    calibrate_limit: int = option(32, "validation prompts for calibration")
    contexts: str = option("256,512,1024", "benchmark contexts")
    bf16: bool = option(False, "bf16 autocast for training")

    def __post_init__(self) -> None:
        super().__post_init__()
        check([(self.minutes > 0, f"--minutes must be > 0, got {self.minutes}"),
               (self.eval_limit >= 1, f"--eval-limit must be >= 1, got {self.eval_limit}")], "demo config")


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
                "are recall numbers, not GSM8K numbers")
        print(f"[demo] WARNING: {note}", file=sys.stderr)
        if note not in demo.notes:
            demo.notes.append(note)
    demo.state["data_used"] = f"{FALLBACK_DATA} (generated recall task; {cfg.data} was not found)"
    return FALLBACK_DATA, FALLBACK_DATA, "test"


def train_stages(demo: Demo, data: str) -> None:
    cfg = demo.cfg
    per_method = 0.45 * cfg.minutes / len(TRAINED)
    steps = cfg.steps or max(5, int(per_method * 60 / cfg.step_seconds))
    for method in TRAINED:
        out = demo.path("memories", method)
        resume = Path(out, "checkpoint").exists() and f"train-{method}" not in demo.state["done"]
        config = TrainConfig(**demo.model, data=data, data_dir=cfg.data_dir, method=method, out=out, steps=steps,
                             minutes=round(per_method * 1.5, 2), batch_size=cfg.batch_size,
                             lr=cfg.softprompt_lr if method == "softprompt" else cfg.lr, val_size=32,
                             max_length=1024, on_bad_data="skip",
                             eval_every=max(steps // 4, 1), save_every=max(steps // 8, 1), bf16=cfg.bf16, resume=resume)
        demo.stage(f"train-{method}", lambda: train(config), config)


def calibrate_stages(demo: Demo, data: str) -> None:
    for method in ("flashmem", "softprompt"):
        config = CalibrateConfig(**demo.model, data=data, data_dir=demo.cfg.data_dir,
                                 memory=demo.path("memories", method), val_size=32, limit=demo.cfg.calibrate_limit,
                                 max_new_tokens=min(128, demo.cfg.max_new_tokens),
                                 hist=demo.path("entropy_histogram.png") if method == "flashmem" else None)
        demo.stage(f"calibrate-{method}", lambda: calibrate(config), config)


def eval_stages(demo: Demo, data: str, split: str, tag: str, limit: int) -> list[str]:
    outs = []
    for method in EVALUATED:
        out = demo.path("eval", f"{tag}_{method}.json")
        config = EvalConfig(**demo.model, data=data, split=split, data_dir=demo.cfg.data_dir, method=method, out=out,
                            max_new_tokens=demo.cfg.max_new_tokens, limit=limit if limit > 0 else None,
                            memory=None if method == "vanilla" else demo.path("memories", method))
        demo.stage(f"eval-{tag}-{method}", lambda: evaluate(config), config)
        outs.append(out)
    return outs


def trace_stage(demo: Demo, data: str, split: str) -> None:
    """Entropy trace of one held-out answer with the trained FlashMem memory."""
    if "trace" in demo.state["done"]:
        return
    question = load_examples(data, split, demo.cfg.data_dir, limit=1)[0][0].question
    config = GenerateCommand(**demo.model, prompt=question, memory=demo.path("memories", "flashmem"),
                             max_new_tokens=demo.cfg.max_new_tokens, trace=demo.path("trace.json"),
                             plot=demo.path("entropy_trace.png"))
    demo.stage("trace", lambda: run_generate(config), config)


def bench_stage(demo: Demo) -> None:
    config = BenchConfig(**demo.model, data_dir=demo.cfg.data_dir, memory=demo.path("memories", "flashmem"),
                         memgen_memory=demo.path("memories", "memgen"), contexts=demo.cfg.contexts, new_tokens=64,
                         repeats=3, schedules="paper", out=demo.path("bench.json"),
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
