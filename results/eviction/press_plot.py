"""Issue 33: recall accuracy through the cut against the KV budget (entries kept per layer besides the sinks),
one line per kvpress press and mode, read from the presses' own summaries in results/eviction/eval/c512
(`press_NAME_kK.json` query-agnostic, `press_NAME_aware_kK.json` query-aware; 512-token documents, 16 facts,
the first 200 test items, 95% Wilson intervals). The plain model's cut (sinks + question window, no memory)
and its whole document are drawn flat, as floor and ceiling; a trained memory is drawn at its K latents
when its summary is named in MEMORIES. Every point prints with its item count.

    python3 results/eviction/press_plot.py results/eviction/accuracy_vs_budget.png
"""
import glob
import json
import os
import re
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

HERE = os.path.dirname(os.path.abspath(__file__))
EVAL = os.path.join(HERE, "eval", "c512")
PLAIN = os.path.join(HERE, "..", "recall", "eval", "cut_c512")  # the plain model on the same 200 items
PRESSES = {"streaming": "StreamingLLM", "knorm": "KNorm", "expected_attention": "ExpectedAttention",
           "kvzip": "KVzip", "snapkv": "SnapKV"}
MEMORIES: dict[str, tuple[str, int]] = {}  # label -> (summary path, K latents); empty until a recipe carries content


def accuracy(path: str) -> tuple[float, float, float, int]:
    summary = json.load(open(path))
    acc = summary["accuracy"]
    return acc["value"], acc["lo"], acc["hi"], summary["n"]


def press_lines() -> dict[str, list[tuple[int, float, float, float, int]]]:
    """label -> [(kept, accuracy, lo, hi, n)] by budget, for every press and mode with a summary."""
    lines = {}
    for press, label in PRESSES.items():
        for mode, tag in (("agnostic", ""), ("aware", "aware_")):
            pts = []
            for path in glob.glob(os.path.join(EVAL, f"press_{press}_{tag}k*.json")):
                kept = int(re.search(r"_k(\d+)\.json$", path).group(1))
                pts.append((kept, *accuracy(path)))
            if pts:
                lines[f"{label}, {mode}"] = sorted(pts)
    return lines


def main(out: str) -> None:
    lines = press_lines()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for i, (label, pts) in enumerate(lines.items()):
        x = [p[0] * (1 + 0.02 * (i - len(lines) / 2)) for p in pts]  # small offsets keep the bars apart
        y = [100 * p[1] for p in pts]
        err = [[100 * (p[1] - p[2]) for p in pts], [100 * (p[3] - p[1]) for p in pts]]
        ax.errorbar(x, y, yerr=err, fmt="o" + ("--" if "aware" in label else "-"), capsize=3, label=label, alpha=0.85)
        for kept, a, _, _, n in pts:
            print(f"{label:32s} kept {kept:3d}: {100 * a:5.1f}% (n={n})")
    for stem, label, style in (("vanilla_whole", "plain model, whole document", ":"),
                               ("vanilla", "plain model, cut (no memory)", "-.")):
        path = os.path.join(PLAIN, f"{stem}.json")
        if os.path.exists(path):
            a, _, _, n = accuracy(path)
            ax.axhline(100 * a, color="grey", linestyle=style, label=f"{label} ({100 * a:.1f}%, n={n})")
            print(f"{label:32s}: {100 * a:5.1f}% (n={n})")
    for label, (path, k) in MEMORIES.items():
        a, lo, hi, n = accuracy(path)
        ax.errorbar([k], [100 * a], yerr=[[100 * (a - lo)], [100 * (hi - a)]], fmt="*", markersize=12, label=label)
    ticks = sorted({p[0] for pts in lines.values() for p in pts})
    ax.set_xscale("log", base=2)
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("KV entries kept per layer besides the sinks (a memory: its K latents)")
    ax.set_ylabel("exact-match accuracy, % (95% interval)")
    ax.set_ylim(0, 100)
    ax.set_title("recall through the cut: 512-token documents, 16 facts\nSmolLM2-135M, kvpress 0.5.5", fontsize=10)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "accuracy_vs_budget.png"))
