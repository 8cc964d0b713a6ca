"""The learning rate of the soft-prompt sweep run whose last held-out loss is lowest.

    python3 results/best_lr.py results/recall/memories    # reads sweep_softprompt_lr*/log.jsonl
"""
import glob
import json
import sys

runs = {}  # learning rate (as in the folder name) -> last held-out loss
for log in glob.glob(f"{sys.argv[1]}/sweep_softprompt_lr*/log.jsonl"):
    vals = [r["val_loss"] for r in map(json.loads, open(log)) if r.get("val_loss") is not None and r["step"] > 0]
    if vals:
        runs[log.rsplit("/", 2)[1].split("_lr")[1]] = vals[-1]
if not runs:
    sys.exit(f"no finished sweep run under {sys.argv[1]}")
print(min(runs, key=runs.get))
