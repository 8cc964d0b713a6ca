"""Reporting: markdown tables, machine facts, eval summaries, the benchmark table and plot, and
paired comparisons of eval runs.

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

from ..errors import FlashmemError
from .grading import kind_of, regrade
from .records import read_records
from .stats import mean_ci, paired_bootstrap, paired_relative_change, proportion_ci

POSITION_BUCKET = 32  # answer tokens per bucket of the trigger rate against answer position


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
BENCH_METHODS = ("vanilla", "flashmem", "memgen", "transformers")  # table order; the last is the peer


def bench_markdown(report: dict) -> str:
    """The bench's results (one table per schedule and batch size) and its ratios, with what produced them."""
    results = sorted(report["results"], key=lambda r: (r["schedule"], r["batch"], r["context"],
                                                       BENCH_METHODS.index(r["method"])))
    rows = [[r["schedule"], r["batch"], r["context"], r["method"], fmt(r["tokens_per_s"], 2),
             _latency_cell(r["step_latency_ms"]), fmt(r["peak_mb"], 0), fmt(r["peak_above_baseline_mb"], 1),
             r["consolidations"], fmt(r.get("trigger_rate"))] for r in results]
    text = markdown_table(["schedule", "batch", "context", "method", "tokens/s", "step latency ms median [min, max]",
                           "peak MB", "peak above load MB", "consolidations", "trigger rate"], rows)
    text += "\n\n" + markdown_table(
        ["ratio", "schedule", "batch", "context", "tokens/s", "step latency", "peak memory", "peak above load"],
        [[r["pair"], r["schedule"], r["batch"], r["context"], fmt(r["tokens_per_s"]), fmt(r["step_latency"]),
          fmt(r["peak"]), fmt(r["peak_above_baseline"])] for r in report["ratios"]])
    s = report["settings"]
    m, c = s["machine"], s["config"]
    where = s.get("device_name") or f"{m['processor']}, {m['cpu_count']} CPUs, {m['torch_threads']} torch threads"
    text += (f"\n\n{s['model']} ({s['dtype']}) on {s['device']} ({where}); {s.get('decode_path', 'eager steps')}; "
             f"{c['new_tokens']} new tokens, "
             f"{c['repeats']} repeats; prompt: {s['prompt_source']}. Schedules: "
             + "; ".join(f"{name}: {s['schedules'][name]}" for name in dict.fromkeys(r["schedule"] for r in results)))
    for note in s["notes"]:
        text += f"\nnote: {note}"
    return text


def _latency_cell(latency: dict) -> str:
    return f"{latency['median']:.2f} [{latency['min']:.2f}, {latency['max']:.2f}]"


def plot_latency(path: str | Path, results: list[dict]) -> None:
    """Median per-step latency against context, per method, for the first schedule at the smallest batch."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    schedule, batch = results[0]["schedule"], min(r["batch"] for r in results)
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for method in BENCH_METHODS:
        rows = sorted((r for r in results if r["method"] == method and r["schedule"] == schedule
                       and r["batch"] == batch), key=lambda r: r["context"])
        if rows:
            ax.plot([r["context"] for r in rows], [r["step_latency_ms"]["median"] for r in rows], marker="o", label=method)
    ax.set_xlabel("context (tokens)")
    ax.set_ylabel("per-step latency (ms)")
    ax.set_title(f"Decoding latency against context ({schedule} schedule, batch {batch})")
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


def compare_runs(paths: list[str | Path], n_boot: int = 10000, seed: int = 0, grader: str | None = None) -> dict:
    """Compare eval runs on the questions they all answered; pairs are (later - earlier) in `paths` order.
    grader: grade every run's answers again with it (grading.py) instead of taking each run's own grades.

    Returns {"data", "split", "n_shared", "runs": [...], "pairs": [...]}: per run its accuracy with
    a Wilson interval and NLL/token on the shared questions; per pair the mean per-question
    difference of correctness and of NLL/token, each with a paired bootstrap 95% interval and p-value.
    """
    if len(paths) < 2:
        raise FlashmemError("a comparison needs at least two runs")
    runs = [load_run(p) for p in paths]
    if grader is not None:
        runs = [{**run, "records": regrade(run["records"], kind_of(run["settings"]), grader)} for run in runs]
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
            "grader": grader or "each run's own", "runs": table, "pairs": pairs}


def comparison_markdown(comparison: dict) -> str:
    runs = markdown_table(
        ["run", "n", "accuracy [95% CI]", "NLL/token"],
        [[r["label"], r["n"], fmt_ci(r["accuracy"], r["accuracy_lo"], r["accuracy_hi"], percent=True),
          fmt(r["nll_per_token"])] for r in comparison["runs"]],
    )
    pairs = markdown_table(
        ["B - A", "n", "accuracy diff [95% CI]", "p", "n (NLL)", "NLL/token diff [95% CI]", "p",
         "NLL change B/A [95% CI]"],
        [[f"{p['b']} - {p['a']}", p["n"], fmt_diff(p["accuracy_diff"], percent=True),
          fmt(_get(p["accuracy_diff"], "p_value_two_sided")), p["n_nll"], fmt_diff(p["nll_diff"]),
          fmt(_get(p["nll_diff"], "p_value_two_sided")), _relative_cell(p.get("nll_relative"))]
         for p in comparison["pairs"]],
    )
    head = (f"Paired comparison on {comparison['n_shared']} shared questions of "
            f"{comparison['data']} ({comparison['split']}); paired bootstrap over questions. "
            "Accuracy diff in points; NLL diff in nats/token (negative: B assigns the reference higher likelihood); "
            "NLL change: B's mean per-question NLL/token relative to A's.")
    if comparison.get("grader") not in (None, "each run's own"):
        head += f" Every run's answers graded again by {comparison['grader']}."
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
        labels.append(label + _variant(s))
    if len(set(labels)) < len(labels):
        labels = [f"{label} [{Path(run['path']).stem}]" for label, run in zip(labels, runs)]
    return labels


def _variant(settings: dict) -> str:
    """What sets a run apart from the method's plain use: an ablation, the prompt-end-only policy, the prompt cut."""
    config = settings.get("config", {})
    parts = [f"ablate {config['ablate']}"] if config.get("ablate", "none") != "none" else []
    if config.get("prompt_memory_only"):
        parts.append("prompt-end only")
    window = settings.get("prompt_window") or (settings.get("memory_config") or {}).get("prompt_window")
    if window:
        parts.append(f"prompt cut, last {window} kept")
    return f", {', '.join(parts)}" if parts else ""


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


def fmt_diff(d: dict | None, percent: bool = False) -> str:
    if d is None:
        return "-"
    scale, digits = (100.0, 1) if percent else (1.0, 3)
    return f"{d['mean_diff'] * scale:+.{digits}f} [{d['lo'] * scale:+.{digits}f}, {d['hi'] * scale:+.{digits}f}]"


# ---- one eval run's summary ----------------------------------------------------------------------
def summarize(records: list[dict], settings: dict) -> dict:
    """Aggregate records into the run's summary (all intervals 95%)."""
    if not records:
        raise FlashmemError("no questions were evaluated")
    n = len(records)
    generated = has_accuracy(records)  # False for --nll-only runs
    correct = sum(bool(r["correct"]) for r in records) if generated else None
    acc, lo, hi = proportion_ci(correct, n) if generated else (None, None, None)
    scored = [r for r in records if r.get("nll") is not None]
    nll_tokens = sum(r["nll_tokens"] for r in scored)
    per_q = [r["nll"] / r["nll_tokens"] for r in scored if r["nll_tokens"]]
    q_mean, q_lo, q_hi = mean_ci(per_q) if per_q else (None, None, None)
    watched = [r for r in records if r.get("trigger_steps") is not None]
    steps = sum(r["decode_steps"] for r in watched)
    gen_tokens = sum(r["gen_tokens"] for r in records)
    gen_seconds = sum(r["gen_seconds"] for r in records)
    return {
        "settings": settings,
        "n": n,
        "accuracy": {"value": acc, "lo": lo, "hi": hi, "correct": correct, "n": n},
        "nll_per_token": sum(r["nll"] for r in scored) / nll_tokens if nll_tokens else None,
        "nll_per_question": {"mean": q_mean, "lo": _finite(q_lo), "hi": _finite(q_hi), "n": len(per_q)},
        "nll_insertions_per_answer": sum(len(r["nll_insertions"]) for r in scored) / len(scored) if scored else None,
        "consolidations_per_answer": sum(r["consolidations"] for r in records) / n if generated else None,
        "prompt_memory_rate": sum(bool(r["prompt_memory"]) for r in records) / n if generated else None,
        "trigger_rate": sum(r["trigger_steps"] for r in watched) / steps if steps else None,
        "trigger_rate_by_position": _rate_by_position(records),
        "generated_tokens": {"total": gen_tokens, "mean": gen_tokens / n},
        # Answers cut by --max-new-tokens: a cap that cuts one method's answers more than another's
        # decides part of their accuracy difference.
        "at_token_limit": (sum(r["gen_tokens"] >= settings["max_new_tokens"] for r in records) / n
                           if generated else None),
        "tokens_per_s": gen_tokens / gen_seconds if gen_seconds > 0 else None,
        "nll_only": not generated,
        "seconds_per_question": sum(r["gen_seconds"] + r["nll_seconds"] for r in records) / n,
    }


def summary_markdown(summary: dict) -> str:
    s, acc = summary["settings"], summary["accuracy"]
    memory = s.get("memory") or "-"
    row = [s["method"], Path(str(memory)).name if memory not in ("-", "untrained") else memory,
           f"{s['data']} ({s['split']})", summary["n"],
           fmt_ci(acc["value"], acc["lo"], acc["hi"], percent=True), fmt(summary["nll_per_token"]),
           fmt(summary["consolidations_per_answer"], 2), fmt(summary["trigger_rate"]),
           fmt(summary["generated_tokens"]["mean"], 1), fmt(summary.get("at_token_limit")),
           fmt(summary["tokens_per_s"], 1), fmt(summary["seconds_per_question"], 2)]
    table = markdown_table(
        ["method", "memory", "data", "n", "accuracy [95% CI]", "NLL/token", "consolidations/answer",
         "trigger rate", "tokens/answer", "at token limit", "tokens/s", "s/question"], [row])
    m = s.get("machine", {})
    return (f"{table}\n\nModel {s['model']} ({s['dtype']}), greedy, max {s['max_new_tokens']} new tokens, "
            f"batch {s['batch_size']}; machine: {m.get('processor')}, {m.get('cpu_count')} CPUs, "
            f"{m.get('torch_threads')} torch threads.")


def results_table(summaries: list[dict]) -> str:
    """Several eval summaries side by side: accuracy, NLL, consolidations, trigger rate, length, speed."""
    rows = []
    for s in summaries:
        acc = s["accuracy"]
        rows.append([s["settings"]["method"], s["n"], fmt_ci(acc["value"], acc["lo"], acc["hi"], percent=True),
                     fmt(s["nll_per_token"]), fmt(s["consolidations_per_answer"], 2), fmt(s["trigger_rate"]),
                     fmt(s["generated_tokens"]["mean"], 1), fmt(s.get("at_token_limit")), fmt(s["tokens_per_s"], 1)])
    return markdown_table(["method", "n", "accuracy [95% CI]", "answer NLL/token", "consolidations/answer",
                           "trigger rate", "tokens/answer", "at token limit", "tokens/s"], rows)


def _rate_by_position(records: list[dict]) -> list[dict] | None:
    """Signal-up rate and consolidations per bucket of answer positions, over the records that hold them."""
    buckets = [r["signal_by_position"] for r in records if r.get("signal_by_position") is not None]
    if not buckets:
        return None
    width = POSITION_BUCKET
    out = []
    for b in range(max(len(x) for x in buckets)):
        steps = sum(x[b][0] for x in buckets if len(x) > b)
        raised = sum(x[b][1] for x in buckets if len(x) > b)
        made = sum(1 for r in records for s in r.get("consolidation_steps") or [] if b * width <= s < (b + 1) * width)
        out.append({"from": b * width, "to": (b + 1) * width, "steps": steps, "rate": raised / steps if steps else None,
                    "consolidations": made})
    return out


def _finite(value):
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value
