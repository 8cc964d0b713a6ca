"""Issue 12's tables from whatever records exist (finished or not), written to results/qwen/tables.md:
per run its accuracy, tokens per answer, share at the token limit, consolidations and trigger rate;
then FlashMem minus every other run on the questions both answered (paired bootstrap).

    python3 results/qwen/tables.py
"""
from pathlib import Path

from flashmem.evaluation.records import read_records
from flashmem.evaluation.report import compare_runs, comparison_markdown, results_table, summarize

E = Path("results/qwen/eval")
RUNS = {"gsm8k": ["vanilla", "flashmem", "flashmem_foreign-context", "flashmem_mean-latents", "softprompt", "memgen"],
        "mawps": ["vanilla", "flashmem"]}


def section(data: str, names: list[str]) -> str:
    files = {n: E / f"{data}_{n}.records.jsonl" for n in names}
    runs = {n: read_records(f) for n, f in files.items() if f.is_file()}  # name: (header, records)
    runs = {n: run for n, run in runs.items() if run[1]}
    if not runs:
        return f"## {data}\n\nno records yet\n"
    summaries = []
    for name, (header, records) in runs.items():
        summary = summarize(records, header["settings"])
        summary["settings"] = {**summary["settings"], "method": name}  # the ablation in the row's name
        summaries.append(summary)
    parts = [f"## {data}\n", "Each run on the questions it has answered so far:\n", results_table(summaries)]
    if "flashmem" in runs:
        for name in (n for n in runs if n != "flashmem"):
            parts += [f"\n### flashmem - {name}\n", comparison_markdown(compare_runs([files[name], files["flashmem"]]))]
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    text = "\n".join(section(data, names) for data, names in RUNS.items())
    (E.parent / "tables.md").write_text(text)
    print(text)
