"""Exit 0 when the training run in FOLDER has finished, 1 otherwise (the run scripts' `done_` check).

A run in progress has a checkpoint whose state says which step it reached. A committed memory has no
checkpoint (git ignores it), so there the log must reach the configured step count with its final
validation loss: a memory stopped mid-schedule is never taken for a finished one.
    python3 results/done.py results/recall/memories/memgen
"""
import json
import sys
from pathlib import Path


def finished(folder: Path) -> bool:
    state = folder / "checkpoint" / "state.json"
    if state.exists():
        s = json.loads(state.read_text())
        return s["step"] >= s["total_steps"]
    try:
        steps = json.loads((folder / "train_config.json").read_text())["steps"]
        last = json.loads((folder / "log.jsonl").read_text().splitlines()[-1])
    except (OSError, IndexError, KeyError, ValueError):
        return False
    return steps is not None and last.get("step") == steps and "val_loss" in last


if __name__ == "__main__":
    sys.exit(0 if finished(Path(sys.argv[1])) else 1)
