"""`flashmem eval`: accuracy, answer NLL and cost of one memory method on a question set.

Per question: greedy batched generation (left padding, chat template), correctness of the final
answer, the teacher-forced NLL of the reference answer (memory placed where the trigger fires),
consolidations, trigger rate, tokens and time. Records are appended to OUT.records.jsonl as each
batch finishes, so a killed run resumes; the summary goes to OUT (JSON) and OUT.md (markdown).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from .answers import is_correct
from .api import FlashMem, prompt_threshold
from .backbone import Backbone
from .cli import add_model_argument
from .config import GenerationConfig, MemoryConfig, atomic_write_text
from .errors import FlashmemError
from .generation import generate
from .memory import WEIGHTS_NAME, LatentMemory, build_memory, load_memory
from .records import RecordFile
from .report import compare_runs, comparison_markdown, fmt, fmt_ci, has_accuracy, machine_info, markdown_table
from .sequence import find_insertions
from .stats import mean_ci, proportion_ci

METHODS = ("vanilla", "flashmem", "memgen", "softprompt")
# An uncalibrated memory's threshold comes from the entropies of the set's first prompts; fixed
# prompts (not the current batch) keep it the same when a run resumes or grows its --limit.
THRESHOLD_PROMPTS = 8

__all__ = ["compare_runs", "evaluate", "summarize", "summary_markdown", "register", "run"]


def register(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a memory method: accuracy, answer NLL, cost",
                       description="Evaluate vanilla decoding or a latent memory on a question set. "
                       "Per-question records go to OUT.records.jsonl (rerun the same command to resume), "
                       "the summary to OUT and a markdown table to OUT.md.")
    add_model_argument(p)
    p.add_argument("--method", required=True, choices=METHODS, help="memory method (vanilla: plain model)")
    p.add_argument("--memory", help="trained memory folder (from `flashmem train`)")
    p.add_argument("--untrained", action="store_true",
                   help="without --memory, evaluate an untrained memory (a plumbing check)")
    p.add_argument("--prompt-memory-only", action="store_true",
                   help="ablation: keep the prompt-end memory, make none during decoding")
    p.add_argument("--data", required=True, help="gsm8k, math500, mawps, a .jsonl file or a hub id")
    p.add_argument("--split", default="test", help="data split (default test)")
    p.add_argument("--data-dir", help="folder holding NAME/SPLIT.jsonl (default $FLASHMEM_DATA_DIR or ../shared/data)")
    p.add_argument("--limit", type=int, help="first N questions only")
    p.add_argument("--batch-size", type=int, default=8, help="questions generated together (default 8)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="most tokens per answer (default 256)")
    p.add_argument("--nll-only", action="store_true",
                   help="only the reference answers' NLL, no generation (fast; accuracy is not measured)")
    p.add_argument("--out", required=True, metavar="FILE.json", help="summary JSON; records and markdown go beside it")
    p.add_argument("--compare", nargs="+", metavar="OTHER.json", default=[],
                   help="paired comparison of this run with other runs on the shared questions")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    _check_arguments(args)
    from .data import load_examples

    examples, report = load_examples(args.data, args.split, args.data_dir)
    if report.skipped:
        print(f"note: {report.summary()}", file=sys.stderr)
    bb, memory, notes = _load_method(args)
    fm = FlashMem(bb, memory, trained=args.memory is not None)
    notes += _ensure_threshold(fm, examples)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    examples = examples[: args.limit] if args.limit else examples
    identity = _identity(args, bb, memory)
    settings = {**identity, "memory": args.memory or ("untrained" if memory is not None else None),
                "limit": args.limit, "batch_size": args.batch_size, "data_dir": args.data_dir,
                "data_source": report.path, "notes": notes, "machine": machine_info()}
    out = Path(args.out)
    records = RecordFile(records_path(out), identity, settings)
    changed = [ex.line for ex in examples
               if ex.line in records.done and records.done[ex.line].get("question_sha") != question_sha(ex.question)]
    if changed:
        raise FlashmemError(f"{records.path} holds other questions under the same ids (e.g. {changed[:3]}): "
                            "the data changed since that run; use another --out")
    if records.done:
        print(f"resuming: {sum(ex.line in records.done for ex in examples)} of {len(examples)} questions "
              f"already in {records.path}", file=sys.stderr)
    gen = GenerationConfig(max_new_tokens=args.max_new_tokens)
    evaluate(fm, examples, gen, args.batch_size, records, label=args.method, nll_only=args.nll_only)
    summary = summarize([records.done[ex.line] for ex in examples], settings)
    summary["records_file"] = records.path.name
    text = summary_markdown(summary)
    write_summary(out, summary, text)
    if args.compare:  # compare_runs reads this run from its files like any other run
        summary["comparison"] = compare_runs([*args.compare, out])
        text += "\n\n" + comparison_markdown(summary["comparison"])
        write_summary(out, summary, text)
    print(text)
    return 0


def records_path(out: Path) -> Path:
    return out.with_suffix(".records.jsonl")


def write_summary(out: Path, summary: dict, text: str) -> None:
    atomic_write_text(out, json.dumps(summary, indent=2, default=_json_default) + "\n")
    atomic_write_text(out.with_suffix(".md"), text + "\n")


# ---- setting up a method ----------------------------------------------------------------------
def _check_arguments(args) -> None:
    if args.limit is not None and args.limit < 1:
        raise FlashmemError(f"--limit must be >= 1, got {args.limit}")
    if args.batch_size < 1:
        raise FlashmemError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.max_new_tokens < 1:
        raise FlashmemError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if args.method == "vanilla" and (args.memory or args.untrained):
        raise FlashmemError("--method vanilla takes no --memory or --untrained (it is the plain model)")
    if args.method != "vanilla" and not args.memory and not args.untrained:
        raise FlashmemError(f"--method {args.method} needs --memory DIR (a trained memory), "
                            "or --untrained to evaluate an untrained one as a plumbing check")
    if args.memory and args.untrained:
        raise FlashmemError("--memory and --untrained exclude each other")
    missing = [path for path in args.compare if not Path(path).is_file()]
    if missing:
        raise FlashmemError(f"--compare: run not found: {', '.join(missing)}")
    if args.method == "memgen":
        import importlib.util
        if importlib.util.find_spec("flashmem.memgen") is None:
            raise FlashmemError("the MemGen baseline (flashmem.memgen) is not available in this installation")


def _load_method(args) -> tuple[Backbone, LatentMemory | None, list[str]]:
    from .models import load_backbone

    hf_model, tokenizer = load_backbone(args.model, dtype=args.dtype)
    bb = Backbone(hf_model, tokenizer, name=args.model)
    if args.method == "vanilla":
        return bb, None, []
    if args.memory:
        memory = load_memory(args.memory, bb)
        if memory.config.method != args.method:
            raise FlashmemError(f"memory {args.memory} is a {memory.config.method} memory, not {args.method}")
        if args.prompt_memory_only:  # the ablation: what memory made during decoding adds
            memory.config.trigger_memory = False
            return bb, memory, ["prompt-end memory only (--prompt-memory-only): no memory during decoding"]
        return bb, memory, []
    torch.manual_seed(0)  # an untrained memory is the same one on every run (resume depends on it)
    if args.method == "memgen":
        from .memgen import memgen_config
        config = memgen_config()  # MemGen's own policy: delimiter trigger, its budget
    else:
        config = MemoryConfig(method=args.method)
    memory = build_memory(bb, config)
    return bb, memory, [f"UNTRAINED {args.method} memory (plumbing check, not a trained result)"]


def _ensure_threshold(fm: FlashMem, examples) -> list[str]:
    """Give an uncalibrated monitor-triggered memory a threshold from the set's first prompts."""
    memory = fm.memory
    if memory is None:
        return []
    cfg = memory.config
    if cfg.trigger != "monitor" or not cfg.trigger_memory or cfg.budget == 0 or cfg.threshold is not None:
        return []
    ids, mask = fm.encode([ex.question for ex in examples[:THRESHOLD_PROMPTS]])
    cfg.threshold = prompt_threshold(fm.backbone, ids, mask, cfg.n_sinks, cfg.percentile)
    return [f"memory has no calibrated threshold; using the {cfg.percentile:g}th percentile of the monitor's "
            f"entropy over the first {len(ids)} prompts: {cfg.threshold:.4f} (run `flashmem calibrate`)"]


def _identity(args, bb: Backbone, memory: LatentMemory | None) -> dict:
    """The settings that define what a record means; a resumed run must match them exactly."""
    from .models import model_identity

    identity = {"model": args.model, "model_fingerprint": model_identity(bb.model, bb.name)["fingerprint"],
                "dtype": args.dtype, "method": args.method, "data": args.data, "split": args.split,
                "max_new_tokens": args.max_new_tokens, "prompt": "chat template, greedy"}
    if args.nll_only:  # only then, so records written before the option existed still resume
        identity["nll_only"] = True
    if memory is not None:
        cfg = {k: v for k, v in asdict(memory.config).items() if k != "version"}
        identity["memory_config"] = cfg
        identity["memory_weights"] = _file_digest(Path(args.memory) / WEIGHTS_NAME) if args.memory else "untrained, seed 0"
    return identity


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


# ---- the evaluation loop -----------------------------------------------------------------------
def evaluate(fm: FlashMem, examples, gen: GenerationConfig, batch_size: int, records: RecordFile,
             label: str = "", progress: bool = True, nll_only: bool = False) -> None:
    """Generate and score every example not yet in `records`, appending a batch at a time."""
    from tqdm import tqdm

    todo = [ex for ex in examples if ex.line not in records.done]
    done_here = [records.done[ex.line] for ex in examples if ex.line in records.done]
    bar = tqdm(total=len(examples), initial=len(done_here), desc=f"eval {label}", unit="q",
               file=sys.stderr, disable=not progress)
    correct = sum(bool(r["correct"]) for r in done_here if r["correct"] is not None)
    try:
        for start in range(0, len(todo), batch_size):
            batch = todo[start: start + batch_size]
            rows = [nll_record(fm, ex) for ex in batch] if nll_only else score_batch(fm, batch, gen)
            records.append(rows)
            bar.update(len(rows))
            if not nll_only:
                correct += sum(r["correct"] for r in rows)
                bar.set_postfix(acc=f"{correct / bar.n:.3f}")
    finally:
        bar.close()


def score_batch(fm: FlashMem, batch, gen: GenerationConfig) -> list[dict]:
    """Records for a batch: generation (timed together) then one teacher-forced NLL per question."""
    bb, memory = fm.backbone, fm.memory
    ids, mask = fm.encode([ex.question for ex in batch])
    start = time.perf_counter()
    result = generate(bb, ids, mask, memory, gen, monitor=False)
    gen_seconds = (time.perf_counter() - start) / len(batch)
    trigger = _trigger_counter(bb, memory)
    rows = []
    for r, ex in enumerate(batch):
        tokens = result.tokens[r]
        text = bb.tokenizer.decode(tokens, skip_special_tokens=True)
        start = time.perf_counter()
        nll = answer_nll(fm, ex)
        steps = max(len(tokens) - 1, 0)  # decode steps after which the trigger was consulted
        rows.append({
            "id": ex.line, "question_sha": question_sha(ex.question), "final": ex.final,
            "prediction": text, "correct": bool(is_correct(text, ex.final, ex.kind)),
            "nll": nll[0], "nll_tokens": nll[1], "nll_insertions": nll[2],
            "gen_tokens": len(tokens), "consolidations": len(result.traces[r].consolidations),
            "prompt_memory": result.traces[r].prompt_memory, "decode_steps": steps,
            "trigger_steps": trigger(result, r, steps) if trigger else None,
            "gen_seconds": gen_seconds, "nll_seconds": time.perf_counter() - start,
        })
    return rows


def nll_record(fm: FlashMem, ex) -> dict:
    """A record with the reference answer's NLL only (--nll-only): no generation, accuracy None."""
    start = time.perf_counter()
    nll = answer_nll(fm, ex)
    return {
        "id": ex.line, "question_sha": question_sha(ex.question), "final": ex.final, "prediction": None,
        "correct": None, "nll": nll[0], "nll_tokens": nll[1], "nll_insertions": nll[2], "gen_tokens": 0,
        "consolidations": None, "prompt_memory": None, "decode_steps": 0, "trigger_steps": None,
        "gen_seconds": 0.0, "nll_seconds": time.perf_counter() - start,
    }


def question_sha(question: str) -> str:
    return hashlib.sha1(question.encode()).hexdigest()[:12]


def answer_nll(fm: FlashMem, ex) -> tuple[float | None, int, list[int]]:
    """(summed NLL, tokens, insertions) of the reference answer + EOS; NLL None when it cannot fit."""
    bb, memory = fm.backbone, fm.memory
    prompt, _ = fm.encode([ex.question])
    tok = bb.tokenizer
    answer = tok(ex.answer, add_special_tokens=False)["input_ids"]
    answer += [tok.eos_token_id] if tok.eos_token_id is not None else []  # the model should also stop
    answer = torch.tensor(answer, device=bb.device)
    cfg = memory.config if memory is not None else None
    extra = 0 if cfg is None else cfg.num_latents * (1 + cfg.budget)
    if prompt.shape[1] + answer.numel() + extra > bb.max_positions:
        return None, int(answer.numel()), []
    scored = find_insertions(bb, memory, prompt[0], answer)
    return float(scored.nll), scored.n_tokens, list(scored.insertions)


def _trigger_counter(bb: Backbone, memory: LatentMemory | None):
    """f(result, row, steps) -> steps on which the method's trigger signal was raised, or None."""
    if memory is None or not memory.config.trigger_memory:
        return None
    cfg = memory.config
    if cfg.trigger == "monitor":
        return lambda result, r, steps: sum(e > cfg.threshold for e in result.traces[r].entropy[:steps])
    from .delimiters import delimiter_token_mask

    delimiters = delimiter_token_mask(bb.tokenizer, bb.model.config.vocab_size).tolist()
    return lambda result, r, steps: sum(bool(delimiters[t]) for t in result.tokens[r][:steps])


# ---- summary -----------------------------------------------------------------------------------
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


def _finite(value):
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def _json_default(value):
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
