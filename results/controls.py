"""The training side of every comparison, read from the runs' own files: per memory (its train_config.json), its learning rate,
steps, examples, training-loop minutes (log.jsonl's elapsed, cumulative over resumes), trainable
parameters (memory.safetensors) and held-out loss at each evaluation.

    python3 results/controls.py > results/controls.md
"""
import glob
import json
import math
import os
import sys

from safetensors import safe_open

RUNS = ["results/run3/memories", "results/recall/memories", "results/qwen/memories"]


def parameters(folder: str) -> int | None:
    path = os.path.join(folder, "memory.safetensors")
    if not os.path.isfile(path):
        return None
    with safe_open(path, "pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())


def task_of(cfg: dict) -> str:
    """The training data, and the prompt cut when the memory was trained with one."""
    window = (cfg.get("memory") or {}).get("prompt_window")
    return (cfg["data"] + (f", prompt cut (last {window} kept)" if window else "")
            + (", own solutions" if cfg.get("targets") == "self" else ""))


def val_note(cfg: dict, record: dict) -> str:
    """Marks a held-out loss scored on other answers than the run learns: before 2026-11-28 every held-out
    loss scored the references (logs of then carry no val_targets), even when the run learnt its own solutions."""
    scored = record.get("val_targets", "reference")
    return "" if scored == cfg.get("targets", "reference") else f" ({scored}s)"


def row(folder: str) -> str | None:
    log = os.path.join(folder, "log.jsonl")
    settings = os.path.join(folder, "train_config.json")
    if not (os.path.isfile(log) and os.path.isfile(settings)):
        return None
    records = [json.loads(line) for line in open(log)]
    steps = {r["step"]: r for r in records}  # a resumed run repeats steps: the last record wins
    cfg = json.load(open(settings))
    last = max(steps)
    vals = ", ".join(f"{s}: {r['val_loss']:.3f}{val_note(cfg, r)}" for s, r in sorted(steps.items())
                     if r.get("val_loss") is not None)
    minutes = steps[last].get("elapsed", 0.0) / 60
    status = "" if cfg["steps"] is None or last >= cfg["steps"] else f" (of {cfg['steps']})"
    n = parameters(folder)
    return (f"| {task_of(cfg)} | {os.path.basename(folder)} | {cfg['method']} | {cfg['lr']:g} | {last}{status} | "
            f"{last * cfg['batch_size']} | {minutes:.0f} | {n:,} | {vals} |" if n is not None else None)


def main() -> None:
    print("| task | run | method | lr | steps | examples | minutes | trainable parameters | held-out loss (step: nats/token) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for root in RUNS:
        for folder in sorted(glob.glob(os.path.join(root, "*"))):
            line = row(folder)
            if line:
                print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
