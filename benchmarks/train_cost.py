"""Cost of one FlashMem training step relative to a forward+backward of the frozen backbone alone.

Both run on the same batch of training examples, alternating, after one warm-up each; medians and
their ratio are printed. The FlashMem step is what `flashmem train` does per optimiser step: for
each example find the insertion points without grad, score [prompt, memory, answer] with grad,
backward, then clip and step AdamW. The baselines are the backbone alone on the same
[prompt, answer] tokens with the gradient taken to the input embeddings (so the backward runs
through every layer, as it must for the memory): one padded batch, and one example at a time.

    python benchmarks/train_cost.py --model smollm2-135m --data gsm8k --batch-size 4 [--bf16]
"""
from __future__ import annotations

import argparse
import statistics
import time
from contextlib import nullcontext
from dataclasses import replace

import torch
import torch.nn.functional as F

from flashmem.data.datasets import load_examples
from flashmem.memory.registry import build_memory, default_config
from flashmem.models.loader import load_backbone
from flashmem.training.batching import encode_examples
from flashmem.training.scoring import training_nll
from flashmem.training.thresholds import sequence_threshold


def flashmem_step(bb, memory, policy, optimizer, seqs, autocast) -> int:
    """One optimiser step as the trainer runs it; returns triggered insertions."""
    optimizer.zero_grad(set_to_none=True)
    total = sum(int(s.answer.numel()) for s in seqs)
    insertions = 0
    for s in seqs:
        with autocast():
            scored = training_nll(bb, memory, s.prompt, s.answer, policy=policy)
        (scored.nll / total).backward()
        insertions += len(scored.insertions)
    torch.nn.utils.clip_grad_norm_(memory.parameters(), 0.53)
    optimizer.step()
    return insertions


def _answer_nll(bb, ids, mask, answer_start, autocast) -> torch.Tensor:
    """Summed NLL of the answer tokens, gradient to the input embeddings."""
    embeds = bb.embed(ids).detach().requires_grad_(True)
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    with autocast():
        logits = bb.model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).logits
    targets = ids[:, 1:].masked_fill(answer_start[:, 1:] == 0, -100)
    return F.cross_entropy(logits[:, :-1].float().flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="sum")


def backbone_batch(bb, seqs, autocast, pad_id: int) -> None:
    """Forward+backward of the plain backbone on the batch, right-padded into one tensor."""
    length = max(s.n_tokens for s in seqs)
    ids = torch.full((len(seqs), length), pad_id)
    mask = torch.zeros_like(ids)
    answer = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        row = torch.cat([s.prompt, s.answer])
        ids[i, : len(row)], mask[i, : len(row)] = row, 1
        answer[i, len(s.prompt): len(row)] = 1
    _answer_nll(bb, ids, mask, answer, autocast).backward()


def backbone_each(bb, seqs, autocast) -> None:
    """The same, one example at a time (the trainer's micro-batch)."""
    for s in seqs:
        row = torch.cat([s.prompt, s.answer])[None]
        answer = torch.zeros_like(row)
        answer[0, len(s.prompt):] = 1
        _answer_nll(bb, row, torch.ones_like(row), answer, autocast).backward()


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--data", default="gsm8k")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--offset", type=int, default=0, help="first training example of the batch")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast for both")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads (0: torch's default); 1 keeps a shared, busy machine from stalling parallel regions")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    bb = load_backbone(args.model, device="cpu")
    tok = bb.tokenizer
    examples, _ = load_examples(args.data, "train", args.data_dir, limit=args.offset + 32)
    seqs = encode_examples(tok, examples, 1024, "skip", args.data)
    batch = seqs[args.offset: args.offset + args.batch_size]
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if args.bf16 else nullcontext
    memory = build_memory(bb, default_config("flashmem"))
    policy = replace(memory.config, threshold=sequence_threshold(bb, memory, seqs[:16], memory.config, autocast()))
    optimizer = torch.optim.AdamW([q for q in memory.parameters() if q.requires_grad], lr=0.0)  # lr 0: keep tau apt
    tokens = sum(s.n_tokens for s in batch)
    answer_tokens = sum(int(s.answer.numel()) for s in batch)
    runs = {
        "flashmem step": lambda: flashmem_step(bb, memory, policy, optimizer, batch, autocast),
        "backbone fwd+bwd, padded batch": lambda: backbone_batch(bb, batch, autocast, tok.pad_token_id),
        "backbone fwd+bwd, one by one": lambda: backbone_each(bb, batch, autocast),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    for name, fn in runs.items():  # warm-up
        fn()
    for _ in range(args.reps):
        for name, fn in runs.items():
            times[name].append(timed(fn))
    insertions = flashmem_step(bb, memory, policy, optimizer, batch, autocast)
    print(f"model {args.model}, {'bf16 autocast' if args.bf16 else 'fp32'}, threads {torch.get_num_threads()}, "
          f"batch {len(batch)} examples, {tokens} tokens ({answer_tokens} answer), tau {policy.threshold:.3f}, "
          f"{insertions} triggered insertions + {len(batch)} prompt-end per step, {args.reps} reps")
    base = statistics.median(times["flashmem step"])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:34s} median {median:7.3f} s  ({tokens / median:6.0f} tokens/s)  "
              f"flashmem step / this = {base / median:5.2f}x")


if __name__ == "__main__":
    main()
