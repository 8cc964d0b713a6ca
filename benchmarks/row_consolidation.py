"""Batched decoding with a memory: a consolidation run for the firing rows only (`Backbone.forward_rows`)
against the whole batch (the path before 2026-11-28), same questions, same memory, in one run.

In a batch of 48 the monitor fires for one or two rows at a time, so the whole-batch path ran 48 rows
through every layer for each of those events. Reports each path's seconds per question (repeats
alternate the order), their ratio, and on how many questions the two wrote the same tokens.

    python benchmarks/row_consolidation.py --model qwen2.5-coder-0.5b --memory results/qwen/memories/flashmem \
        --prompt boxed --limit 16 --max-new-tokens 128 --repeats 2 --threads 1 --out results/qwen/row_consolidation.json
"""
from __future__ import annotations

import argparse
import contextlib
import json
import platform
import time
from pathlib import Path
from unittest import mock

import torch

from flashmem.config import GenerationConfig
from flashmem.data.datasets import load_examples
from flashmem.data.prompts import encode_prompts, system_prompt
from flashmem.decoding.generation import generate
from flashmem.memory.registry import load_memory
from flashmem.models.backbone import Backbone
from flashmem.models.loader import load_backbone
from flashmem.models.runtime import set_threads


def run(bb, memory, ids, mask, max_new_tokens: int, whole: bool) -> tuple[float, list[list[int]], int]:
    """(seconds, tokens per row, consolidation events) of one greedy batch."""
    gen = GenerationConfig(max_new_tokens=max_new_tokens)
    whole_batch = mock.patch.object(Backbone, "forward_rows", lambda *a, **k: None)  # every row runs, as before
    with whole_batch if whole else contextlib.nullcontext():
        start = time.perf_counter()
        result = generate(bb, ids, mask, memory, gen, monitor=False, policy=memory.config)
        seconds = time.perf_counter() - start
    events = len({step for trace in result.traces for step in trace.consolidations})
    return seconds, result.tokens, events


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--memory", required=True, help="a trained memory folder")
    ap.add_argument("--data", default="gsm8k")
    ap.add_argument("--prompt", default="plain", help="system prompt name (as flashmem eval --prompt)")
    ap.add_argument("--limit", type=int, default=16, help="questions, decoded as one batch")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    set_threads(args.threads)
    bb = load_backbone(args.model)
    memory = load_memory(args.memory, bb).eval()
    examples, _ = load_examples(args.data, "test", limit=args.limit)
    questions = [ex.question for ex in examples]
    ids, mask = encode_prompts(bb.tokenizer, questions, bb.device, system=system_prompt(args.prompt))
    times = {"rows": [], "whole": []}
    tokens, events = {}, {}
    for repeat in range(args.repeats):
        for path in (("rows", "whole") if repeat % 2 == 0 else ("whole", "rows")):
            seconds, tokens[path], events[path] = run(bb, memory, ids, mask, args.max_new_tokens, path == "whole")
            times[path].append(seconds)
            print(f"repeat {repeat} {path}: {seconds:.1f} s, {events[path]} consolidation steps", flush=True)
    same = sum(a == b for a, b in zip(tokens["rows"], tokens["whole"]))
    best = {path: min(values) for path, values in times.items()}
    report = {
        "model": args.model, "memory": args.memory, "questions": len(questions), "batch": len(questions),
        "max_new_tokens": args.max_new_tokens, "threads": args.threads, "machine": platform.machine(),
        "torch": torch.__version__, "seconds": times, "seconds_per_question_best": {p: s / len(questions) for p, s in best.items()},
        "rows_over_whole_time": best["rows"] / best["whole"], "consolidation_steps": events,
        "same_tokens": same,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"rows-only path / whole batch: {report['rows_over_whole_time']:.2f}x time; "
          f"same tokens on {same} of {len(questions)} questions -> {args.out}")


if __name__ == "__main__":
    main()
