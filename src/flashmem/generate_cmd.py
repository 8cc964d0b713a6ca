"""`flashmem generate`: answer one prompt with (or without) latent memory; optional trace and plot."""
from __future__ import annotations

import argparse
import sys

from .api import FlashMem
from .cli import add_model_argument
from .config import GenerationConfig
from .errors import FlashmemError
from .trace import plot_trace, trace_record, write_trace


def register(sub) -> None:
    p = sub.add_parser("generate", help="generate an answer with FlashMem memory",
                       description="Generate an answer to PROMPT with the backbone and its latent memory.")
    add_model_argument(p)
    p.add_argument("prompt", help="the question or instruction (the chat template is applied)")
    p.add_argument("--memory", help="trained memory folder (from `flashmem train`); default: untrained")
    p.add_argument("--no-memory", action="store_true", help="plain decoding, no latents")
    p.add_argument("--max-new-tokens", type=int, default=256, help="most tokens to generate (default 256)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus mass when sampling")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--trace", metavar="FILE.json", help="write the per-step monitor trace as JSON")
    p.add_argument("--plot", metavar="FILE.png", help="plot the entropy curve, threshold and triggers")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not args.prompt.strip():
        raise FlashmemError("empty prompt")
    gen = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                           top_p=args.top_p, seed=args.seed, use_memory=not args.no_memory)
    fm = FlashMem.load(args.model, memory=args.memory, dtype=args.dtype)
    if not fm.trained and gen.use_memory:
        print("note: no --memory given: running an UNTRAINED consolidator (plumbing check; "
              "train one with `flashmem train`)", file=sys.stderr)
    ids, mask = fm.encode([args.prompt])
    if gen.use_memory:
        set_here = fm.ensure_threshold(ids, mask)
        if set_here is not None:
            print(f"note: memory has no calibrated threshold; using the {fm.memory.config.percentile:g}th "
                  f"percentile of this prompt's entropies: {set_here:.3f}", file=sys.stderr)
    answer = fm.generate([args.prompt], gen)[0]
    print(answer.text)
    if args.trace:
        write_trace(args.trace, [trace_record(answer.trace, fm.backbone.tokenizer, args.prompt, answer.text)])
        print(f"trace: {args.trace} ({len(answer.trace.consolidations)} consolidations after the prompt-end "
              f"memory)" if answer.trace.prompt_memory else f"trace: {args.trace}", file=sys.stderr)
    if args.plot:
        plot_trace(args.plot, answer.trace)
        print(f"plot: {args.plot}", file=sys.stderr)
    return 0
