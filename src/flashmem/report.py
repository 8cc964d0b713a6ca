"""Reporting: markdown tables, machine facts, the benchmark table and plot, and paired comparisons.

`compare_runs` reads the per-question records of several `flashmem eval` runs on the same data and
compares every pair on the questions all runs answered: accuracy and answer NLL differences with a
paired bootstrap interval, so a gain can be told from noise.
"""
from __future__ import annotations

import json
import math
import os
import platform
import sys
from itertools import combinations
from pathlib import Path

import numpy as np

from .errors import FlashmemError
from .records import read_records
from .stats import paired_bootstrap, paired_relative_change, proportion_ci


def machine_info() -> dict:
    """Where a measurement ran: numbers from different machines are never compared directly."""
    import torch
    import transformers

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": sys.version.split()[0],
    }


def fmt(value, digits: int = 3) -> str:
    """A number for a table; missing values print as a dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def fmt_ci(value, lo, hi, digits: int = 3, percent: bool = False) -> str:
    if value is None:
        return "-"
    scale, unit = (100.0, "%") if percent else (1.0, "")
    d = 1 if percent else digits
    if lo is None or hi is None or math.isnan(lo) or math.isnan(hi):
        return f"{value * scale:.{d}f}{unit}"
    return f"{value * scale:.{d}f}{unit} [{lo * scale:.{d}f}, {hi * scale:.{d}f}]"


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# ---- the efficiency benchmark ------------------------------------------------------------------
BENCH_METHODS = ("vanilla", "flashmem", "memgen")


def bench_markdown(report: dict) -> str:
    rows = [[r["context"], r["method"], fmt(r["tokens_per_s"], 2), fmt(r["step_latency_ms"], 1),
             fmt(r["peak_rss_mb"], 0), r["consolidations"]]
            for r in sorted(report["results"], key=lambda r: (r["context"], BENCH_METHODS.index(r["method"])))]
    text = markdown_table(["context", "method", "tokens/s", "step latency ms", "peak RSS MB", "consolidations"], rows)
    for pair, table in report["ratios"].items():
        text += f"\n\n{pair}\n\n" + markdown_table(
            ["context", "tokens/s", "step latency", "peak RSS", "peak RSS above load"],
            [[ctx, fmt(r["tokens_per_s"], 3), fmt(r["step_latency"], 3), fmt(r["peak_rss"], 3),
              fmt(r["peak_rss_above_baseline"], 3)] for ctx, r in table.items()])
    s = report["settings"]
    m = s["machine"]
    text += (f"\n\n{s['model']} ({s['dtype']}), {s['new_tokens']} new tokens, median of {s['repeats']}, "
             f"{s['consolidations']} consolidations + prompt-end memory; prompt: {s['prompt_source']}; "
             f"machine: {m['processor']}, {m['cpu_count']} CPUs, {m['torch_threads']} torch threads.")
    for note in s["notes"]:
        text += f"\nnote: {note}"
    return text


def plot_latency(path: str | Path, results: list[dict]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4))
    for method in BENCH_METHODS:
        rows = sorted((r for r in results if r["method"] == method), key=lambda r: r["context"])
        if rows:
            ax.plot([r["context"] for r in rows], [r["step_latency_ms"] for r in rows], marker="o", label=method)
    ax.set_xlabel("context (tokens)")
    ax.set_ylabel("per-step latency (ms)")
    ax.set_title("Decoding latency against context")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---- paired comparison of eval runs ------------------------------------------------------------
def load_run(path: str | Path) -> dict:
    """A run from its summary JSON (records found beside it) or directly from its records JSONL."""
    path = Path(path)
    if not path.is_file():
        raise FlashmemError(f"run not found: {path}")
    if path.suffix == ".jsonl":
        header, records = read_records(path)
        settings = header.get("settings", {})
    else:
        try:
            summary = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise FlashmemError(f"{path} is not a summary JSON: {err}") from None
        if "records_file" not in summary:
            raise FlashmemError(f"{path} is not a `flashmem eval` summary (no records_file)")
        header, records = read_records(path.parent / summary["records_file"])
        settings = summary.get("settings") or header.get("settings", {})
    return {"path": str(path), "settings": settings, "records": {r["id"]: r for r in records}}


def compare_runs(paths: list[str | Path], n_boot: int = 10000, seed: int = 0) -> dict:
    """Compare eval runs on the questions they all answered; pairs are (later - earlier) in `paths` order.

    Returns {"data", "split", "n_shared", "runs": [...], "pairs": [...]}: per run its accuracy with
    a Wilson interval and NLL/token on the shared questions; per pair the mean per-question
    difference of correctness and of NLL/token, each with a paired bootstrap 95% interval and p-value.
    """
    if len(paths) < 2:
        raise FlashmemError("a comparison needs at least two runs")
    runs = [load_run(p) for p in paths]
    _check_same_questions_source(runs)
    shared = sorted(set.intersection(*(set(r["records"]) for r in runs)), key=str)
    if not shared:
        raise FlashmemError("the runs share no question ids: were they made on the same data?")
    for qid in shared:
        shas = {r["records"][qid].get("question_sha") for r in runs}
        if len(shas) > 1:
            raise FlashmemError(f"question {qid} differs between the runs: they were made on different data")
    labels = _labels(runs)
    table = [_run_row(label, run, shared) for label, run in zip(labels, runs)]
    pairs = [_pair(labels[i], labels[j], runs[i], runs[j], shared, n_boot, seed)
             for i, j in combinations(range(len(runs)), 2)]
    first = runs[0]["settings"]
    return {"data": first.get("data"), "split": first.get("split"), "n_shared": len(shared),
            "runs": table, "pairs": pairs}


def comparison_markdown(comparison: dict) -> str:
    runs = markdown_table(
        ["run", "n", "accuracy [95% CI]", "NLL/token"],
        [[r["label"], r["n"], fmt_ci(r["accuracy"], r["accuracy_lo"], r["accuracy_hi"], percent=True),
          fmt(r["nll_per_token"])] for r in comparison["runs"]],
    )
    pairs = markdown_table(
        ["B - A", "n", "accuracy diff [95% CI]", "p", "n (NLL)", "NLL/token diff [95% CI]", "p",
         "NLL change B/A [95% CI]"],
        [[f"{p['b']} - {p['a']}", p["n"], _diff_cell(p["accuracy_diff"], percent=True),
          fmt(_get(p["accuracy_diff"], "p_value_two_sided")), p["n_nll"], _diff_cell(p["nll_diff"]),
          fmt(_get(p["nll_diff"], "p_value_two_sided")), _relative_cell(p.get("nll_relative"))]
         for p in comparison["pairs"]],
    )
    head = (f"Paired comparison on {comparison['n_shared']} shared questions of "
            f"{comparison['data']} ({comparison['split']}); paired bootstrap over questions. "
            "Accuracy diff in points; NLL diff in nats/token (negative: B assigns the reference higher likelihood); "
            "NLL change: B's mean per-question NLL/token relative to A's.")
    return f"{head}\n\n{runs}\n\n{pairs}"


def _check_same_questions_source(runs: list[dict]) -> None:
    keys = {(r["settings"].get("data"), r["settings"].get("split")) for r in runs}
    if len(keys) > 1:
        raise FlashmemError(f"runs were made on different data/splits: {sorted(keys, key=str)}")


def _labels(runs: list[dict]) -> list[str]:
    labels = []
    for run in runs:
        s = run["settings"]
        memory = s.get("memory")
        label = s.get("method", "?")
        if memory and memory != "untrained":
            label += f" ({Path(str(memory)).name})"
        elif memory == "untrained":
            label += " (untrained)"
        labels.append(label)
    if len(set(labels)) < len(labels):
        labels = [f"{label} [{Path(run['path']).stem}]" for label, run in zip(labels, runs)]
    return labels


def _per_token(record: dict) -> float | None:
    if record.get("nll") is None or not record.get("nll_tokens"):
        return None
    return record["nll"] / record["nll_tokens"]


def _run_row(label: str, run: dict, shared: list) -> dict:
    recs = [run["records"][q] for q in shared]
    if has_accuracy(recs):
        acc, lo, hi = proportion_ci(sum(bool(r["correct"]) for r in recs), len(recs))
    else:  # an --nll-only run has no accuracy
        acc, lo, hi = None, None, None
    scored = [r for r in recs if r.get("nll") is not None]
    tokens = sum(r["nll_tokens"] for r in scored)
    return {"label": label, "path": run["path"], "method": run["settings"].get("method"), "n": len(recs),
            "accuracy": acc, "accuracy_lo": lo, "accuracy_hi": hi,
            "nll_per_token": sum(r["nll"] for r in scored) / tokens if tokens else None}


def has_accuracy(records: list[dict]) -> bool:
    """Whether these eval records were generated and scored (an --nll-only run's are not)."""
    return all(r.get("correct") is not None for r in records)


def _pair(label_a: str, label_b: str, a: dict, b: dict, shared: list, n_boot: int, seed: int) -> dict:
    recs_a, recs_b = [a["records"][q] for q in shared], [b["records"][q] for q in shared]
    accuracy = None
    if has_accuracy(recs_a) and has_accuracy(recs_b):
        accuracy = paired_bootstrap(np.array([float(r["correct"]) for r in recs_b]),
                                    np.array([float(r["correct"]) for r in recs_a]), n_boot=n_boot, seed=seed)
    nll_ids = [q for q in shared if _per_token(a["records"][q]) is not None
               and _per_token(b["records"][q]) is not None]
    nll_a = np.array([_per_token(a["records"][q]) for q in nll_ids])
    nll_b = np.array([_per_token(b["records"][q]) for q in nll_ids])
    return {
        "a": label_a, "b": label_b, "n": len(shared), "n_nll": len(nll_ids),
        "accuracy_diff": accuracy,
        "nll_diff": paired_bootstrap(nll_b, nll_a, n_boot=n_boot, seed=seed) if nll_ids else None,
        # B's mean per-question NLL/token relative to A's: -0.10 is "10% lower".
        "nll_relative": paired_relative_change(nll_b, nll_a, n_boot=n_boot, seed=seed) if nll_ids else None,
    }


def _get(d: dict | None, key: str):
    return None if d is None else d.get(key)


def _relative_cell(r: dict | None) -> str:
    if r is None:
        return "-"
    return f"{r['change'] * 100:+.1f}% [{r['lo'] * 100:+.1f}, {r['hi'] * 100:+.1f}]"


def _diff_cell(d: dict | None, percent: bool = False) -> str:
    if d is None:
        return "-"
    scale, digits = (100.0, 1) if percent else (1.0, 3)
    return f"{d['mean_diff'] * scale:+.{digits}f} [{d['lo'] * scale:+.{digits}f}, {d['hi'] * scale:+.{digits}f}]"
