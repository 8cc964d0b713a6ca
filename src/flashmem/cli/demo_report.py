"""The demo's report.md, from the JSON its stages wrote (nothing here is measured; every figure is read
from a file beside it). It opens with the finding, in numbers; the tables follow, rendered by
flashmem.evaluation.report."""
from __future__ import annotations

import json
import time
from pathlib import Path

from ..evaluation.report import (
    bench_markdown,
    compare_runs,
    comparison_markdown,
    fmt,
    fmt_ci,
    fmt_diff,
    machine_info,
    markdown_table,
    results_table,
)
from ..files import atomic_write_text

CUT = "flashmem_cut"  # the run names demo.py gives its held-out evaluations
IN_VIEW = ("vanilla", "flashmem", "flashmem_foreign", "softprompt", "memgen")
THROUGH_CUT = ("vanilla_cut", CUT, f"{CUT}_foreign")


def _load(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


def _accuracy(summary: dict) -> str:
    a = summary["accuracy"]
    return fmt_ci(a["value"], a["lo"], a["hi"], percent=True)


def _above_zero(d: dict | None) -> bool:
    return d is not None and d["lo"] > 0


def cut_finding(runs: dict[str, str], window: int) -> str:
    """Does the memory carry the document? Own memory against another document's, through the cut."""
    own, foreign = _load(runs[CUT]), _load(runs[f"{CUT}_foreign"])
    whole, cut = _load(runs["vanilla"]), _load(runs["vanilla_cut"])
    pair = compare_runs([runs[f"{CUT}_foreign"], runs[CUT]])["pairs"][0]  # own - foreign
    accuracy, nll = pair["accuracy_diff"], pair["nll_diff"]
    if _above_zero(accuracy):
        verdict = "Yes: answers are right more often with the memory of the document asked about."
    elif nll is not None and nll["hi"] < 0:
        verdict = ("Only weakly: the reference answers are likelier with the document's own memory, but greedy "
                   "answers are not right more often.")
    else:
        verdict = "No: the memory of the document asked about does no better than another document's."
    return (f"**Does the memory carry the document?** {verdict} With the document cut from the cache (only the "
            f"attention sinks and the question's last {window} tokens stay), FlashMem's memory made from it answers "
            f"{_accuracy(own)} of {own['n']} held-out questions, and one made from another document "
            f"{_accuracy(foreign)}; own minus other: {fmt_diff(accuracy, percent=True)} points, answer NLL/token "
            f"{fmt_diff(nll)}. The plain model answers {_accuracy(whole)} with the whole document and "
            f"{_accuracy(cut)} through the cut.")


def in_view_finding(runs: dict[str, str]) -> str:
    plain, fm, soft = _load(runs["vanilla"]), _load(runs["flashmem"]), _load(runs["softprompt"])
    pair = compare_runs([runs["vanilla"], runs["flashmem"]])["pairs"][0]
    text = (f"**With the whole context in view**, FlashMem answers {_accuracy(fm)} against the plain model's "
            f"{_accuracy(plain)} ({fmt_diff(pair['accuracy_diff'], percent=True)} points) and the tuned soft prompt's "
            f"{_accuracy(soft)}")
    if "flashmem_foreign" in runs:
        text += f"; with a memory made from another question's context, {_accuracy(_load(runs['flashmem_foreign']))}"
    return text + "."


def cost_finding(bench: dict) -> str:
    ratios = [r for r in bench["ratios"] if r["pair"] == "flashmem/vanilla"]
    if not ratios:
        return ""
    widest = max(ratios, key=lambda r: r["context"])
    memgen = [r for r in bench["ratios"] if r["pair"] == "flashmem/memgen" and r["context"] == widest["context"]]
    text = (f"**Cost:** FlashMem decodes at {widest['tokens_per_s']:.2f}x the plain model's tokens/s at "
            f"{widest['context']} tokens of context")
    if memgen:
        text += f", with {memgen[0]['step_latency']:.2f}x MemGen's step latency"
    return text + f" ({widest['schedule']} schedule; the bench below)."


def training_table(out: Path) -> str:
    rows = []
    for folder in sorted((out / "memories").glob("*")):
        log = folder / "log.jsonl"
        if not log.is_file():
            continue
        records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        steps = [r for r in records if "loss" in r]
        vals = [r["val_loss"] for r in records if r.get("val_loss") is not None]
        if not steps:
            continue
        rows.append([folder.name, steps[-1].get("step"), fmt(steps[0]["loss"]), fmt(steps[-1]["loss"]),
                     fmt(vals[0]) if vals else "-", fmt(vals[-1]) if vals else "-",
                     fmt(steps[-1].get("elapsed", 0) / 60, 1)])
    return markdown_table(["memory", "steps", "first loss", "last loss", "first val loss", "last val loss",
                           "minutes"], rows)


def results_section(title: str, runs: dict[str, str], names: tuple[str, ...], comparisons: dict, key: str) -> list[str]:
    paths = [runs[n] for n in names if n in runs]
    if len(paths) < 2:
        return []
    comparisons[key] = compare_runs(paths)
    summaries = [_load(p) for p in paths]
    return [f"## {title} ({summaries[0]['settings']['data']}, {summaries[0]['settings']['split']})", "",
            results_table(summaries), "", "Paired differences (second minus first, 95% bootstrap interval):", "",
            comparison_markdown(comparisons[key]), ""]


def write_report(out: Path, evals: dict[str, dict[str, str]], notes: list[str], state: dict, cfg: dict) -> Path:
    out = Path(out)
    data = state.get("data_used", cfg["data"])
    bench = _load(out / "bench.json")
    heldout = evals["heldout"]
    findings = ([cut_finding(heldout, cfg["prompt_window"])] if CUT in heldout else []) + \
        [in_view_finding(heldout), cost_finding(bench)]
    parts = [f"# flashmem demo report: `{cfg['model']}` on {data}", ""]
    for finding in filter(None, findings):  # one paragraph each
        parts += [finding, ""]
    if CUT in heldout:
        parts += ["KV-cache compression at the same budget (kvpress's presses) needs its own environment and is "
                  "measured in the repository's RESULTS.md (\"KV-cache compression\"), not here.", ""]
    parts += [f"Model `{cfg['model']}`; data used: {data}. "
              f"Written {time.strftime('%Y-%m-%d %H:%M')} from the JSON files in this folder.", ""]
    parts += [f"> **Note:** {n}" for n in notes]
    m = machine_info()
    parts += [f"Machine: {m['processor']}, {m['cpu_count']} CPUs, torch {m['torch']}, "
              f"transformers {m['transformers']}.", "",
              f"## Training ({cfg['steps']} steps for every memory)", "", training_table(out), ""]
    comparisons: dict = {}
    for tag, runs in evals.items():
        parts += results_section(f"Held-out results, context in view: {tag}", runs, IN_VIEW, comparisons, tag)
        parts += results_section(f"Held-out results through the cut: {tag}", runs, THROUGH_CUT, comparisons,
                                 f"{tag}_cut")
    parts += ["## Cost (decoding, same prompts, methods alternated in one process)", "",
              bench_markdown(bench), "",
              "## Plots", "", "- `entropy_trace.png`: the monitor's entropy over one answer, threshold, triggers",
              "- `entropy_histogram.png`: validation entropies and the calibrated threshold",
              "- `latency_vs_context.png`: per-step latency against context length", "",
              "Raw data: `eval/*.json` (+ `.records.jsonl`), `bench.json`, `trace.json`, `memories/*/log.jsonl`.",
              f"Stage times (s): {json.dumps(state.get('seconds', {}))}"]
    atomic_write_text(out / "comparisons.json", json.dumps(comparisons, indent=2, default=str) + "\n")
    path = out / "report.md"
    atomic_write_text(path, "\n".join(parts) + "\n")
    return path
