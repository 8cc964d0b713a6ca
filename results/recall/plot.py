"""Recall accuracy against context length, one line per method, read from the evaluations' own summaries
(`results/recall/eval/c<CONTEXT>/<run>.json`, test split, with their 95% Wilson intervals). The plain
model's validation sweep (`results/recall/plain_sweep/c*_f16.json`, other items) is drawn dashed beside
it. Each point's item count is printed, since the context lengths were not run on the same number of
items.

    python3 results/recall/plot.py results/recall/accuracy_vs_context.png
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
RUNS = {  # file stem -> label
    "vanilla": "plain model",
    "flashmem": "FlashMem",
    "flashmem_foreign-context": "FlashMem, foreign context",
    "flashmem_mean-latents": "FlashMem, mean latents",
    "softprompt": "soft prompt (tuned)",
    "memgen": "MemGen",
}


def context_of(path: str) -> int:
    return int(re.search(r"c(\d+)", os.path.basename(os.path.dirname(path)) + os.path.basename(path)).group(1))


def points(pattern: str) -> list[tuple[int, float, float, float, int]]:
    """(context, accuracy, lo, hi, n) for every summary matching pattern, by context."""
    out = []
    for path in glob.glob(pattern):
        summary = json.load(open(path))
        acc = summary["accuracy"]
        out.append((context_of(path), acc["value"], acc["lo"], acc["hi"], summary["n"]))
    return sorted(out)


def table() -> dict[str, list[tuple[int, float, float, float, int]]]:
    lines = {label: points(os.path.join(HERE, "eval", "c[0-9]*", f"{stem}.json")) for stem, label in RUNS.items()}
    lines = {label: pts for label, pts in lines.items() if pts}
    lines["plain model, validation sweep"] = points(os.path.join(HERE, "plain_sweep", "c*_f16.json"))
    return lines


def main(out: str) -> None:
    lines = table()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for i, (label, pts) in enumerate(lines.items()):
        x = [p[0] * (1 + 0.015 * (i - len(lines) / 2)) for p in pts]  # small offsets keep the bars apart
        y = [100 * p[1] for p in pts]
        err = [[100 * (p[1] - p[2]) for p in pts], [100 * (p[3] - p[1]) for p in pts]]
        style = "--" if "sweep" in label else "-"
        ax.errorbar(x, y, yerr=err, fmt="o" + style, capsize=3, label=label, alpha=0.85)
        for (c, a, _, _, n) in pts:
            print(f"{label:32s} context {c:5d}: {100 * a:5.1f}% (n={n})")
    ax.set_xscale("log", base=2)
    ticks = sorted({p[0] for pts in lines.values() for p in pts})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("context tokens (16 facts)")
    ax.set_ylabel("exact-match accuracy, % (95% interval)")
    ax.set_ylim(0, 100)
    ax.set_title("recall, SmolLM2-135M; memories trained at 1,024 tokens")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "accuracy_vs_context.png"))
