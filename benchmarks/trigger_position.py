"""Where the Cognitive Monitor fires along an answer: the paper's raw entropy against the
length-normalised one (H / log n of the visible non-sink keys), on the same memory and answers.

For each rule, tau is set by `flashmem train`'s rule applied to the trained memory (its percentile of
the entropies at answer positions of training sequences, prompt-end memory only), then the
reference answers of the evaluation split are teacher-forced with the same prompt-end memory and the
share of positions whose entropy is above tau is counted per bucket of answer position. Triggers are
off while measuring, so this is where a fixed tau *would* fire on the system as the monitor first sees
it (the memory a trigger adds changes the entropies after it); the raw rule is also reported with the
memory's own tau (the one training used and evaluation uses unless `flashmem calibrate` replaces it).

    python benchmarks/trigger_position.py --memory results/run3/memories/flashmem --limit 200 \
        --out results/run3/trigger_position.json --plot results/run3/trigger_position.png --threads 1
"""
from __future__ import annotations

import argparse
import json
from dataclasses import replace

import numpy as np

from flashmem.data.datasets import load_examples
from flashmem.memory.registry import load_memory
from flashmem.models.loader import load_backbone
from flashmem.models.runtime import set_threads
from flashmem.training.batching import encode_examples
from flashmem.training.scoring import find_insertions
from flashmem.training.thresholds import sequence_threshold
from flashmem.training.train import THRESHOLD_EXAMPLES

RULES = ("raw", "normalized")


def answer_entropies(bb, memory, sequences, rule: str) -> list[np.ndarray]:
    """Per sequence, the monitor's entropy at each answer position (prompt-end memory only)."""
    policy = replace(memory.config, entropy=rule, trigger_memory=False)
    return [np.asarray(find_insertions(bb, memory, s.prompt, s.answer, with_entropy=True, policy=policy).entropies)
            for s in sequences]


def rate_by_position(entropies: list[np.ndarray], tau: float, width: int) -> list[dict]:
    """Share of answer positions above tau, per bucket [start, start + width)."""
    longest = max(len(e) for e in entropies)
    rows = []
    for start in range(0, longest, width):
        window = [e[start:start + width] for e in entropies if len(e) > start]
        values = np.concatenate(window)
        rows.append({"start": start, "end": start + width, "positions": int(values.size),
                     "answers": len(window), "trigger_rate": float((values > tau).mean())})
    return rows


def summarize(entropies: list[np.ndarray], tau: float, width: int) -> dict:
    every = np.concatenate(entropies)
    return {"tau": tau, "trigger_rate": float((every > tau).mean()), "by_position": rate_by_position(entropies, tau, width)}


def plot(path: str, report: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    for label, result in report["results"].items():
        rows = [r for r in result["by_position"] if r["answers"] >= report["min_answers"]]
        ax.plot([(r["start"] + r["end"]) / 2 for r in rows], [r["trigger_rate"] for r in rows], marker="o",
                label=f"{label} (tau {result['tau']:.3f}, overall {result['trigger_rate']:.1%})")
    ax.axhline(1 - report["percentile"] / 100, color="grey", ls=":", label=f"{100 - report['percentile']:g}% aim")
    ax.set_xlabel("answer position (tokens)")
    ax.set_ylabel("share of positions above tau")
    ax.set_title(f"Monitor trigger rate along the answer ({report['n_eval']} {report['data']} answers)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--memory", required=True)
    ap.add_argument("--data", default="gsm8k")
    ap.add_argument("--split", default="test")
    ap.add_argument("--limit", type=int, default=200, help="evaluation answers")
    ap.add_argument("--tau-examples", type=int, default=THRESHOLD_EXAMPLES,
                    help="training sequences that set tau (as train does)")
    ap.add_argument("--width", type=int, default=32, help="answer positions per bucket")
    ap.add_argument("--min-answers", type=int, default=10, help="plot only buckets reached by this many answers")
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--out", default=None, help="JSON report (printed either way)")
    ap.add_argument("--plot", default=None, help="PNG of trigger rate against answer position")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    set_threads(args.threads)
    bb = load_backbone(args.model)
    memory = load_memory(args.memory, bb).eval()
    train_ex, _ = load_examples(args.data, "train", limit=args.tau_examples)
    eval_ex, _ = load_examples(args.data, args.split, limit=args.limit)
    encode = lambda exs, src: encode_examples(bb.tokenizer, exs, args.max_length, "skip", src)  # noqa: E731
    train_seqs, eval_seqs = encode(train_ex, f"{args.data} train"), encode(eval_ex, f"{args.data} {args.split}")
    pct = memory.config.percentile
    results = {}
    for rule in RULES:
        tau = sequence_threshold(bb, memory, train_seqs, replace(memory.config, entropy=rule))  # train's rule
        seen = answer_entropies(bb, memory, eval_seqs, rule)
        results[rule] = summarize(seen, tau, args.width)
        if rule == "raw" and memory.config.threshold is not None and memory.config.entropy == "raw":
            results["raw, memory's own tau"] = summarize(seen, memory.config.threshold, args.width)
    report = {"memory": args.memory, "data": args.data, "split": args.split, "n_eval": len(eval_seqs),
              "n_tau": len(train_seqs), "percentile": pct, "width": args.width, "min_answers": args.min_answers,
              "results": results}
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    if args.plot:
        plot(args.plot, report)


if __name__ == "__main__":
    main()
