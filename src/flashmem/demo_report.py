"""The demo's report.md: accuracy, answer NLL, consolidations, speed, memory and ratios, from the
JSON the stages wrote (nothing here is measured; every figure is read from a file beside it)."""
from __future__ import annotations

import json
import time
from pathlib import Path

from .config import atomic_write_text
from .report import comparison_markdown, compare_runs, fmt, fmt_ci, machine_info, markdown_table


def _load(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


def results_table(summaries: list[dict]) -> str:
    rows = []
    for s in summaries:
        acc = s["accuracy"]
        rows.append([s["settings"]["method"], s["n"], fmt_ci(acc["value"], acc["lo"], acc["hi"], percent=True),
                     fmt(s["nll_per_token"]), fmt(s["consolidations_per_answer"], 2), fmt(s["trigger_rate"]),
                     fmt(s["generated_tokens"]["mean"], 1), fmt(s.get("at_token_limit")), fmt(s["tokens_per_s"], 1)])
    return markdown_table(["method", "n", "accuracy [95% CI]", "answer NLL/token", "consolidations/answer",
                           "trigger rate", "tokens/answer", "at token limit", "tokens/s"], rows)


def bench_table(bench: dict) -> str:
    rows = [[r["method"], r["context"], fmt(r["tokens_per_s"], 2), fmt(r["step_latency_ms"], 1),
             fmt(r["peak_rss_mb"], 0), r["consolidations"]] for r in bench["results"]]
    table = markdown_table(["method", "context", "tokens/s", "ms/step", "peak RSS MB", "consolidations"], rows)
    ratio_rows = []
    for pair, by_ctx in bench.get("ratios", {}).items():
        for ctx, r in by_ctx.items():
            ratio_rows.append([pair, ctx, fmt(r["tokens_per_s"]), fmt(r["step_latency"]), fmt(r["peak_rss"])])
    ratios = markdown_table(["ratio", "context", "tokens/s", "step latency", "peak RSS"], ratio_rows)
    return f"{table}\n\n{ratios}"


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


def write_report(out: Path, evals: dict[str, list[str]], notes: list[str], state: dict, args: dict) -> Path:
    out = Path(out)
    parts = ["# flashmem demo report", "",
             f"Written {time.strftime('%Y-%m-%d %H:%M')} from the JSON files in this folder. "
             f"Model `{args['model']}`, training data `{args['data']}`.", ""]
    parts += [f"> **Note:** {n}" for n in notes]
    m = machine_info()
    parts += [f"Machine: {m['processor']}, {m['cpu_count']} CPUs, torch {m['torch']}, "
              f"transformers {m['transformers']}.", "", "## Training (same budget for every memory)", "",
              training_table(out), ""]
    comparisons = {}
    for tag, paths in evals.items():
        summaries = [_load(p) for p in paths]
        comparison = compare_runs(paths)
        comparisons[tag] = comparison
        parts += [f"## Held-out results: {tag} ({summaries[0]['settings']['data']}, "
                  f"{summaries[0]['settings']['split']})", "", results_table(summaries), "",
                  "Paired differences (second minus first, 95% bootstrap interval):", "",
                  comparison_markdown(comparison), ""]
    bench = _load(out / "bench.json")
    parts += ["## Cost (decoding, same prompts, methods alternated in one process)", "", bench_table(bench), "",
              "## Plots", "", "- `entropy_trace.png`: the monitor's entropy over one answer, threshold, triggers",
              "- `entropy_histogram.png`: validation entropies and the calibrated threshold",
              "- `latency_vs_context.png`: per-step latency against context length", "",
              "Raw data: `eval/*.json` (+ `.records.jsonl`), `bench.json`, `trace.json`, `memories/*/log.jsonl`.",
              f"Stage times (s): {json.dumps(state.get('seconds', {}))}"]
    atomic_write_text(out / "comparisons.json", json.dumps(comparisons, indent=2, default=str) + "\n")
    path = out / "report.md"
    atomic_write_text(path, "\n".join(parts) + "\n")
    return path
