"""The plain model's held-out loss beside the trained memories' (what a training log cannot show).

A training log's held-out loss starts at the *untrained* memory's value, which is not the plain model's:
fresh latents disturb the frozen model. This rebuilds a run's held-out split from the run's own
train_config.json (same data, limit, seed, targets, prompt), then scores every held-out answer with no
memory and with each memory given (the trigger places memory as in training), and reports the
token-weighted NLL, the share of answer tokens that are not the argmax of their logits (0 for text the
model would write greedily itself), and each memory minus the plain model in mean NLL per token of an answer, paired over answers.

    python benchmarks/heldout_plain.py --run results/qwen/memories/flashmem \
        --memory results/qwen/memories/flashmem results/qwen/memories/softprompt --threads 1 \
        --out results/qwen/heldout_plain.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from flashmem.data.prompts import system_prompt
from flashmem.evaluation.stats import paired_bootstrap
from flashmem.memory.registry import load_memory
from flashmem.models.loader import load_backbone
from flashmem.models.runtime import set_threads
from flashmem.training.batching import encode_examples
from flashmem.training.scoring import find_insertions
from flashmem.training.train import TrainConfig, load_data, self_targets
from flashmem.training.trainer import TRAIN_CONFIG


def run_config(folder: Path) -> TrainConfig:
    """The run's TrainConfig as saved beside its weights (its memory block is not needed here)."""
    saved = json.loads((folder / TRAIN_CONFIG).read_text())
    saved.pop("memory", None)
    return TrainConfig(**saved)


@torch.no_grad()
def score(bb, memory, seqs) -> list[dict]:
    out = []
    for seq in seqs:
        prompt, answer = seq.prompt.to(bb.device), seq.answer.to(bb.device)
        scored = find_insertions(bb, memory, prompt, answer, policy=memory.config if memory else None)
        out.append({"nll": float(scored.nll), "tokens": scored.n_tokens, "misses": int(scored.misses),
                    "insertions": len(scored.insertions)})
    return out


def summary(rows: list[dict]) -> dict:
    tokens = sum(r["tokens"] for r in rows)
    return {"answers": len(rows), "tokens": tokens, "nll_per_token": sum(r["nll"] for r in rows) / tokens,
            "not_argmax_share": sum(r["misses"] for r in rows) / tokens,
            "answers_all_argmax": sum(r["misses"] == 0 for r in rows),
            "insertions_per_answer": sum(r["insertions"] for r in rows) / len(rows)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="a trained memory folder: its train_config.json defines the split")
    ap.add_argument("--memory", nargs="*", default=[], help="memory folders to score beside the plain model")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", help="write the JSON here too")
    args = ap.parse_args()
    set_threads(args.threads)
    cfg = run_config(Path(args.run))
    _, val_ex, source = load_data(cfg)
    bb = load_backbone(cfg.model, dtype=cfg.dtype)
    if cfg.targets == "self":  # read from the run's targets file (collected during training)
        val_ex = self_targets(bb, val_ex, cfg, required=False)
    seqs = encode_examples(bb.tokenizer, val_ex, cfg.max_length, "skip", source, system_prompt(cfg.prompt))
    rows = {"plain": score(bb, None, seqs)}
    for folder in args.memory:
        rows[folder] = score(bb, load_memory(folder, bb), seqs)
    per_token = {name: [r["nll"] / r["tokens"] for r in rs] for name, rs in rows.items()}
    result = {"run": args.run, "targets": cfg.targets, "held_out_answers": len(seqs),
              "summary": {name: summary(rs) for name, rs in rows.items()},
              "minus_plain": {name: paired_bootstrap(per_token[name], per_token["plain"])
                              for name in rows if name != "plain"},
              "command": "python benchmarks/heldout_plain.py " + " ".join(
                  f"--{k} {' '.join(v) if isinstance(v, list) else v}" for k, v in vars(args).items() if v)}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
