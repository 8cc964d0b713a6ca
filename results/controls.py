"""The training side of every comparison, read from the runs' own files: per memory, its learning rate,
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

RUNS = [("GSM8K", "results/run3/memories"), ("recall c1024", "results/recall/memories")]


def parameters(folder: str) -> int | None:
    path = os.path.join(folder, "memory.safetensors")
    if not os.path.isfile(path):
        return None
    with safe_open(path, "pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())


def row(task: str, folder: str) -> str | None:
    log = os.path.join(folder, "log.jsonl")
    state = os.path.join(folder, "checkpoint", "state.json")
    if not (os.path.isfile(log) and os.path.isfile(state)):
        return None
    records = [json.loads(line) for line in open(log)]
    steps = {r["step"]: r for r in records}  # a resumed run repeats steps: the last record wins
    saved = json.load(open(state))
    cfg = saved["train_config"]
    last = max(steps)
    vals = ", ".join(f"{s}: {r['val_loss']:.3f}" for s, r in sorted(steps.items()) if r.get("val_loss") is not None)
    minutes = steps[last].get("elapsed", 0.0) / 60
    status = "" if saved["step"] >= saved["total_steps"] else f" (of {saved['total_steps']})"
    n = parameters(folder)
    return (f"| {task} | {os.path.basename(folder)} | {cfg['method']} | {cfg['lr']:g} | {last}{status} | "
            f"{last * cfg['batch_size']} | {minutes:.0f} | {n:,} | {vals} |" if n is not None else None)


def main() -> None:
    print("| task | run | method | lr | steps | examples | minutes | trainable parameters | held-out loss (step: nats/token) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for task, root in RUNS:
        for folder in sorted(glob.glob(os.path.join(root, "*"))):
            line = row(task, folder)
            if line:
                print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
