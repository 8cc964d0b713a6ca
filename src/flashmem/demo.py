"""`flashmem demo`: the main job. Train FlashMem, a MemGen-style memory and the soft-prompt control
with the same budget, calibrate, evaluate all four methods on held-out questions, benchmark the
cost, and write a report folder (report.md, plots, raw JSON).

Each stage is one `flashmem` command run in-process; a finished stage is recorded in
OUT/demo_state.json and every command resumes its own partial work, so an interrupted demo picks
up where it stopped when run again with the same arguments.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .config import atomic_write_text
from .errors import FlashmemError

TRAINED = ("flashmem", "softprompt", "memgen")
EVALUATED = ("vanilla", "flashmem", "memgen", "softprompt")


def register(sub) -> None:
    from .cli import add_model_argument

    p = sub.add_parser("demo", help="train, calibrate, evaluate and benchmark end to end; write a report",
                       description="The main job: FlashMem vs the plain model, MemGen and a soft prompt, "
                       "trained with one budget and measured on held-out questions. Resumable.")
    add_model_argument(p)
    p.add_argument("--out", default="demo_out", help="report folder (default demo_out)")
    p.add_argument("--minutes", type=float, default=20.0, help="rough total wall-clock budget (default 20)")
    p.add_argument("--data", default="gsm8k", help="training set (default gsm8k; its train split)")
    p.add_argument("--eval-data", default=None, help="held-out set (default: --data, split test)")
    p.add_argument("--eval-split", default="test", help="held-out split (default test)")
    p.add_argument("--eval-limit", type=int, default=40, help="held-out questions per method (default 40)")
    p.add_argument("--mawps-limit", type=int, default=0, help="also evaluate on MAWPS: N questions (-1: all)")
    p.add_argument("--data-dir", help="folder of named datasets (default $FLASHMEM_DATA_DIR or ../shared/data)")
    p.add_argument("--steps", type=int, help="training steps per method (default: from --minutes)")
    p.add_argument("--step-seconds", type=float, default=10.0,
                   help="expected seconds per training step, used to size --steps from --minutes")
    p.add_argument("--batch-size", type=int, default=4, help="training examples per step (default 4)")
    p.add_argument("--lr", type=float, default=3e-4, help="peak learning rate (default 3e-4)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="tokens per evaluated answer (default 256)")
    p.add_argument("--calibrate-limit", type=int, default=32, help="validation prompts for calibration (default 32)")
    p.add_argument("--contexts", default="256,512,1024", help="benchmark contexts (default 256,512,1024)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast for training")
    p.set_defaults(func=run)


class Demo:
    """The stages, each skipped when OUT/demo_state.json says it finished."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.state_path = self.out / "demo_state.json"
        self.state = json.loads(self.state_path.read_text()) if self.state_path.is_file() else {"done": []}
        self.notes: list[str] = self.state.get("notes", [])
        self.common = ["--model", args.model, "--dtype", args.dtype]
        if args.data_dir:
            self.common_data = ["--data-dir", args.data_dir]
        else:
            self.common_data = []

    def stage(self, name: str, argv: list[str]) -> None:
        from .cli import main

        if name in self.state["done"]:
            print(f"[demo] {name}: done already", file=sys.stderr)
            return
        print(f"[demo] {name}: flashmem {' '.join(argv)}", file=sys.stderr)
        start = time.time()
        status = main(argv)
        if status != 0:
            raise FlashmemError(f"demo stage {name!r} failed (exit {status}); fix it and rerun to resume")
        self.state["done"].append(name)
        self.state.setdefault("seconds", {})[name] = round(time.time() - start, 1)
        self.save()

    def save(self) -> None:
        self.state["notes"] = self.notes
        atomic_write_text(self.state_path, json.dumps(self.state, indent=2) + "\n")

    def path(self, *parts: str) -> str:
        return str(self.out.joinpath(*parts))


def choose_data(demo: Demo) -> tuple[list[str], list[str]]:
    """(training data args, held-out data args); falls back to a generated set, loudly."""
    from .data import load_examples, synthetic_arithmetic

    args = demo.args
    try:
        load_examples(args.data, "train", args.data_dir, limit=1)
        eval_data = args.eval_data or args.data
        load_examples(eval_data, args.eval_split, args.data_dir, limit=1)
        return ["--data", args.data], ["--data", eval_data, "--split", args.eval_split]
    except FlashmemError as err:
        note = (f"{args.data} could not be read ({err}); this demo uses a generated set of arithmetic word "
                "problems instead (flashmem.data.synthetic_arithmetic), so its numbers are not GSM8K numbers")
        print(f"[demo] WARNING: {note}", file=sys.stderr)
        if note not in demo.notes:
            demo.notes.append(note)
    folder = Path(demo.path("data"))
    for split, n, seed in (("train", 2000, 0), ("test", 400, 1)):
        path = folder / f"{split}.jsonl"
        if not path.is_file():
            rows = [json.dumps({"question": e.question, "answer": e.answer}) for e in synthetic_arithmetic(n, seed)]
            atomic_write_text(path, "\n".join(rows) + "\n")
    return ["--data", str(folder / "train.jsonl")], ["--data", str(folder / "test.jsonl")]


def train_stages(demo: Demo, train_data: list[str]) -> None:
    args = demo.args
    per_method = 0.45 * args.minutes / len(TRAINED)
    steps = args.steps or max(5, int(per_method * 60 / args.step_seconds))
    for method in TRAINED:
        out = demo.path("memories", method)
        argv = ["train", *demo.common, *train_data, *demo.common_data, "--method", method, "--out", out,
                "--steps", str(steps), "--minutes", f"{per_method * 1.5:.2f}", "--batch-size", str(args.batch_size),
                "--lr", str(args.lr), "--val-size", "32", "--eval-every", str(max(steps // 4, 1)),
                "--save-every", str(max(steps // 8, 1))]
        if method == "memgen":
            argv += ["--budget", "3", "--min-gap", "1"]  # MemGen's own insertion policy
        if args.bf16:
            argv.append("--bf16")
        if Path(out, "checkpoint").exists() and f"train-{method}" not in demo.state["done"]:
            argv.append("--resume")
        demo.stage(f"train-{method}", argv)


def calibrate_stages(demo: Demo, train_data: list[str]) -> None:
    for method in ("flashmem", "softprompt"):
        argv = ["calibrate", *demo.common, *train_data, *demo.common_data, "--memory", demo.path("memories", method),
                "--val-size", "32", "--limit", str(demo.args.calibrate_limit),
                "--max-new-tokens", str(min(128, demo.args.max_new_tokens))]
        if method == "flashmem":
            argv += ["--hist", demo.path("entropy_histogram.png")]
        demo.stage(f"calibrate-{method}", argv)


def eval_stages(demo: Demo, eval_data: list[str], tag: str, limit: int) -> list[str]:
    outs = []
    for method in EVALUATED:
        out = demo.path("eval", f"{tag}_{method}.json")
        argv = ["eval", *demo.common, *eval_data, *demo.common_data, "--method", method, "--out", out,
                "--max-new-tokens", str(demo.args.max_new_tokens)]
        if limit > 0:
            argv += ["--limit", str(limit)]
        if method != "vanilla":
            argv += ["--memory", demo.path("memories", method)]
        demo.stage(f"eval-{tag}-{method}", argv)
        outs.append(out)
    return outs


def trace_stage(demo: Demo, eval_data: list[str]) -> None:
    """Entropy trace of one held-out answer with the trained FlashMem memory."""
    from .data import load_examples

    if "trace" in demo.state["done"]:
        return
    name = eval_data[1]
    split = eval_data[3] if len(eval_data) > 3 else "test"
    question = load_examples(name, split, demo.args.data_dir, limit=1)[0][0].question
    argv = ["generate", *demo.common, "--memory", demo.path("memories", "flashmem"),
            "--max-new-tokens", str(demo.args.max_new_tokens), "--trace", demo.path("trace.json"),
            "--plot", demo.path("entropy_trace.png"), question]
    demo.stage("trace", argv)


def bench_stage(demo: Demo) -> None:
    argv = ["bench", *demo.common, *demo.common_data, "--memory", demo.path("memories", "flashmem"),
            "--memgen-memory", demo.path("memories", "memgen"), "--contexts", demo.args.contexts,
            "--new-tokens", "32", "--repeats", "2", "--out", demo.path("bench.json"),
            "--plot", demo.path("latency_vs_context.png")]
    demo.stage("bench", argv)


def run(args: argparse.Namespace) -> int:
    from .demo_report import write_report

    if args.minutes <= 0:
        raise FlashmemError(f"--minutes must be > 0, got {args.minutes}")
    demo = Demo(args)
    start = time.time()
    train_data, eval_data = choose_data(demo)
    demo.save()
    train_stages(demo, train_data)
    calibrate_stages(demo, train_data)
    evals = {"heldout": eval_stages(demo, eval_data, "heldout", args.eval_limit)}
    if args.mawps_limit:
        evals["mawps"] = eval_stages(demo, ["--data", "mawps", "--split", "test"], "mawps", args.mawps_limit)
    trace_stage(demo, eval_data)
    bench_stage(demo)
    report = write_report(demo.out, evals, demo.notes, demo.state, vars(args))
    print(f"[demo] report: {report} ({(time.time() - start) / 60:.1f} min this run)", file=sys.stderr)
    return 0
