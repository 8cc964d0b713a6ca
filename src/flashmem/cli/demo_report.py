"""The demo's report.md, from the JSON its stages wrote (nothing here is measured; every figure is read
from a file beside it). Tables are rendered by flashmem.evaluation.report."""
from __future__ import annotations

import json
import time
from pathlib import Path

from ..evaluation.report import (
    bench_markdown,
    compare_runs,
    comparison_markdown,
    fmt,
    machine_info,
    markdown_table,
    results_table,
)
from ..files import atomic_write_text


def _load(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


def training_table(out: Path) -> str:
    rows = []
    for method in ("flashmem", "softprompt", "memgen"):
        log = out / "memories" / method / "log.jsonl"
        if not log.is_file():
            continue
        records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        steps = [r for r in records if "loss" in r]
        vals = [r["val_loss"] for r in records if r.get("val_loss") is not None]
        if not steps:
            continue
        rows.append([method, steps[-1].get("step"), fmt(steps[0]["loss"]), fmt(steps[-1]["loss"]),
                     fmt(vals[0]) if vals else "-", fmt(vals[-1]) if vals else "-",
                     fmt(steps[-1].get("elapsed", 0) / 60, 1)])
    return markdown_table(["method", "steps", "first loss", "last loss", "first val loss", "last val loss",
                           "minutes"], rows)


def write_report(out: Path, evals: dict[str, list[str]], notes: list[str], state: dict, cfg: dict) -> Path:
    out = Path(out)
    data = state.get("data_used", cfg["data"])
    parts = [f"# flashmem demo report: `{cfg['model']}` on {data}", "",
             f"Model `{cfg['model']}`; data used: {data}. "
             f"Written {time.strftime('%Y-%m-%d %H:%M')} from the JSON files in this folder.", ""]
    parts += [f"> **Note:** {n}" for n in notes]
    m = machine_info()
    parts += [f"Machine: {m['processor']}, {m['cpu_count']} CPUs, torch {m['torch']}, "
              f"transformers {m['transformers']}.", "", "## Training (same budget for every memory)", "",
              training_table(out), ""]
    comparisons = {}
    for tag, paths in evals.items():
        summaries = [_load(p) for p in paths]
        comparisons[tag] = compare_runs(paths)
        parts += [f"## Held-out results: {tag} ({summaries[0]['settings']['data']}, "
                  f"{summaries[0]['settings']['split']})", "", results_table(summaries), "",
                  "Paired differences (second minus first, 95% bootstrap interval):", "",
                  comparison_markdown(comparisons[tag]), ""]
    parts += ["## Cost (decoding, same prompts, methods alternated in one process)", "",
              bench_markdown(_load(out / "bench.json")), "",
              "## Plots", "", "- `entropy_trace.png`: the monitor's entropy over one answer, threshold, triggers",
              "- `entropy_histogram.png`: validation entropies and the calibrated threshold",
              "- `latency_vs_context.png`: per-step latency against context length", "",
              "Raw data: `eval/*.json` (+ `.records.jsonl`), `bench.json`, `trace.json`, `memories/*/log.jsonl`.",
              f"Stage times (s): {json.dumps(state.get('seconds', {}))}"]
    atomic_write_text(out / "comparisons.json", json.dumps(comparisons, indent=2, default=str) + "\n")
    path = out / "report.md"
    atomic_write_text(path, "\n".join(parts) + "\n")
    return path
