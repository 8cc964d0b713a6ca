"""Issue 32's tables from the raw files in results/eviction: the capacity table (facts recalled by
optimised vectors, K x injection path), each training run's held-out loss by step, and each trained
memory's evaluation through the cut (own memory against another document's).

    python3 results/eviction/tables.py > results/eviction/tables.md
"""
import json
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent


def rows(path: Path) -> list[dict]:
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a torn last line of an interrupted run
            pass
    return out


def capacity_table(path: Path) -> str:
    points = rows(path)
    if not points:
        return ""
    cells = defaultdict(list)
    seen_plain = set()
    for p in points:
        if p["k"] == 0 and p["doc"] in seen_plain:  # the plain cut is path-free: one point per document
            continue
        seen_plain |= {p["doc"]} if p["k"] == 0 else set()
        cells[(p["k"], "none" if p["k"] == 0 else p["path"])].append(p)
    ks = sorted({k for k, _ in cells})
    setting = points[0]["setting"]
    lines = [f"**{setting}** ({points[0]['doc_tokens']} tokens before the question; `{path.name}`)", "",
             "| K | embed: recalled (steps to all, values) | embed on the embedding norm | kv: recalled (steps to all, values) |",
             "|---|---|---|---|"]
    for k in ks:
        if k == 0:
            lines.append(f"| 0 (plain cut) | {_cell(cells[(0, 'none')])} | | |")
            continue
        lines.append(f"| {k} | {_cell(cells.get((k, 'embed'), []))} | {_cell(cells.get((k, 'embed-norm'), []))} | "
                     f"{_cell(cells.get((k, 'kv'), []))} |")
    return "\n".join(lines) + "\n"


def _cell(points: list[dict]) -> str:
    if not points:
        return "not run"
    got = sum(p["recalled"] for p in points)
    total = sum(p["facts"] for p in points)
    steps = ", ".join(str(p["steps"]) if p["recalled"] == p["facts"] else f">{p['steps']}" for p in points)
    return f"{got}/{total} over {len(points)} doc(s) ({steps}; {points[0]['values']:,})"


def training_table(folder: Path) -> str:
    log = folder / "log.jsonl"
    if not log.exists():
        return ""
    records = rows(log)
    held = [r for r in records if "val_loss" in r]
    last = max((r for r in records if "step" in r), key=lambda r: r["step"])
    lines = [f"**{folder.name}**: step {last['step']}, {last.get('elapsed', 0) / 60:.0f} min; held-out answer NLL/token by step: "
             + ", ".join(f"{r['step']}: {r['val_loss']:.3f}" for r in held)]
    parts = [r for r in records if "loss" in r][-20:]
    if parts:  # a part a run does not compute (a gist-only phase's answer NLL: null) counts as absent
        mean = {k: sum(r.get(k) or 0.0 for r in parts) / len(parts)
                for k in ("loss", "kl", "recon", "gist", "gist_hits")}
        text = f"last {len(parts)} steps' means: answer NLL {mean['loss']:.3f}, KL {mean['kl']:.3f}, " \
               f"reconstruction {mean['recon']:.3f}"
        if any("gist" in r for r in parts):
            text += f", gist cross-entropy {mean['gist']:.3f} (latents naming their token: {mean['gist_hits']:.2f})"
        lines.append(text)
    return "\n\n".join(lines) + "\n"


def _summary(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _acc(summary: dict | None) -> str:
    if summary is None:
        return "-"
    a = summary["accuracy"]
    return f"{100 * a['value']:.1f}% [{100 * a['lo']:.1f}, {100 * a['hi']:.1f}] of {a['n']}"


def _nll(summary: dict | None) -> str:
    return "-" if summary is None or summary.get("nll_per_token") is None else f"{summary['nll_per_token']:.3f}"


def _pair(path: Path) -> str:
    """other - own answer NLL/token (positive: the own memory's answers are likelier) from a `flashmem compare`
    file of the own run first and the other document's second (its pair is b - a)."""
    if not path.exists():
        return "-"
    d = json.loads(path.read_text())["pairs"][0]["nll_diff"]
    return f"{d['mean_diff']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]"


def evaluation_table(folder: Path) -> str:
    """One row per evaluated memory and step: accuracy through the cut, own and with another document's
    memory, and the answers' NLL/token with the paired difference. `fit_` rows are the fit check's memory
    on its own training documents (answers and NLL in one run)."""
    lines = ["| run | items | accuracy, own memory | accuracy, another document's | NLL own | NLL other | "
             "other - own NLL [95% CI] |", "|---|---|---|---|---|---|---|"]
    for path in sorted(folder.glob("*.json")):
        name, own = path.stem, _summary(path)
        # a trained memory's own run: an eval summary with accuracy, not the plain model's, a press's or an ablation
        if "accuracy" not in own or name.startswith(("nll_", "vanilla", "press")) or name.endswith("foreign-context"):
            continue
        foreign = _summary(folder / f"{name}_foreign-context.json")
        fit = name.startswith("fit_")
        nll_own = own if fit else _summary(folder / f"nll_{name}.json")
        nll_foreign = foreign if fit else _summary(folder / f"nll_{name}_foreign-context.json")
        items = f"train 1-{own['accuracy']['n']}" if fit else "test"
        lines.append(f"| {name} | {items} | {_acc(own)} | {_acc(foreign)} | "
                     f"{_nll(nll_own)} | {_nll(nll_foreign)} | {_pair(folder / f'compare_nll_{name}.json')} |")
    plain = [(label, _summary(folder / f"vanilla_{cut}.json")) for label, cut in
             (("the plain model through the cut", "cut"), ("with the whole document", "whole"))]
    if any(summary for _, summary in plain):
        lines += ["", "; ".join(f"{label}: {_acc(summary)}" for label, summary in plain)]
    oracle = _summary(folder / "oracle_tokens.json")
    if oracle:  # oracle_tokens.py: the right text's token embeddings in the latent slots
        lines += ["", "oracle latents (the right text's token embeddings, through the same cut; oracle_tokens.py): "
                  + "; ".join(f"{v} {r['correct']}/{r['n']}" for v, r in oracle["variants"].items())]
    return "\n".join(lines) + "\n"


def main() -> None:
    print("# Issue 32 tables (generated by results/eviction/tables.py)\n")
    print("## Capacity: facts recalled greedily through the cut by K optimised vectors\n")
    for path in sorted(HERE.glob("capacity_*.jsonl")):
        print(capacity_table(path))
    print("## Training runs\n")
    for folder in sorted((HERE / "memories").glob("*")) if (HERE / "memories").exists() else []:
        print(training_table(folder))
    for folder in sorted((HERE / "eval").glob("c128*")):
        setting = "4 facts" if folder.name == "c128" else f"{folder.name.split('f')[-1]} fact(s)"
        print(f"## Evaluations through the cut, 128-token documents, {setting} (eval/{folder.name})\n")
        print(evaluation_table(folder))


if __name__ == "__main__":
    main()
