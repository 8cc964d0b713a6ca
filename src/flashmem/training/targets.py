"""`--targets self`: train on the frozen backbone's own correct solutions instead of the references.

A dataset's terse reference answers can lower answer NLL while costing accuracy (the model learns
the dataset's style and drops its own step-by-step reasoning); distilling the model's own successful
reasoning avoids that. Each training question is sampled a few times from the plain backbone
(memory off, temperature ~0.7, batched); a sample is kept when its final answer is correct.
Results go to OUT/self_targets.jsonl one question per line as they are produced, so a rerun picks
up where the last one stopped (a torn last line is ignored and redone).

A model's greedy solutions are text it already writes: every token is its argmax, so learning them can
at best leave it as it is. `reuse` (`--self-reuse FILE`) starts from an earlier collection: the questions
it solved keep those solutions (copied, marked `reused`), and only the ones it failed are sampled, so the
targets hold correct solutions the model reaches only by sampling.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..config import GenerationConfig
from ..data.answers import is_correct
from ..data.datasets import Example
from ..data.prompts import encode_prompts
from ..decoding.generation import generate
from ..errors import FlashmemError
from ..models.backbone import Backbone

SELF_TARGETS = "self_targets.jsonl"


@dataclass(frozen=True)
class SelfTargetSettings:
    samples: int = 4  # samples per question
    temperature: float = 0.7
    max_new_tokens: int = 256
    batch_size: int = 16  # sequences per generate call (questions x samples)
    seed: int = 0
    system: str | None = None  # the system prompt the questions are asked with
    reuse: str | None = None  # an earlier collection whose solved questions keep their solutions


def question_key(example: Example) -> str:
    return f"{example.source}:{example.line}"


def read_cache(path: Path) -> dict[str, dict]:
    """Finished questions from an earlier run, keyed by source:line; a torn last line is dropped."""
    done: dict[str, dict] = {}
    if not path.is_file():
        return done
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
            done[record["key"]] = record
        except (ValueError, KeyError, TypeError):
            continue
    return done


def resume_cache(path: Path) -> dict[str, dict]:
    """read_cache for a file about to be appended to: a torn last line (a stopped run) is ended first, so
    the next record starts on a line of its own."""
    if path.is_file() and path.read_bytes()[-1:] not in (b"", b"\n"):
        with path.open("a") as handle:
            handle.write("\n")
    return read_cache(path)


def append_records(path: Path, records: list[dict]) -> None:
    with path.open("a") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _reuse_solved(path: Path, todo: list[Example], earlier: Path, done: dict[str, dict]) -> list[Example]:
    """Copy into this collection the questions an earlier one solved; the rest are left to sample."""
    if not earlier.is_file():
        raise FlashmemError(f"--self-reuse: {earlier} not found")
    if earlier.resolve() == path.resolve():
        raise FlashmemError(f"--self-reuse: {earlier} is this run's own targets file; pass another --self-targets-file")
    solved = read_cache(earlier)
    keys = [question_key(ex) for ex in todo]
    copied = [dict(solved[key], reused=str(earlier)) for key in keys if solved.get(key, {}).get("kept")]
    if copied:
        append_records(path, copied)
        done.update((r["key"], r) for r in copied)
    return [ex for ex in todo if question_key(ex) not in done]


def batches(todo: list[Example], cfg: SelfTargetSettings) -> list[list[Example]]:
    """The generate calls that sample todo: fixed by the list, so a resumed or split run makes the same ones."""
    per_call = max(1, cfg.batch_size // cfg.samples)
    return [todo[start:start + per_call] for start in range(0, len(todo), per_call)]


def batch_seed(batch: list[Example], cfg: SelfTargetSettings) -> int:
    return cfg.seed * 1_000_003 + batch[0].line


def sample_batch(bb: Backbone, questions: list[Example], cfg: SelfTargetSettings, seed: int) -> list[dict]:
    """Sample cfg.samples solutions for each question in one batched generate call."""
    tok = bb.tokenizer
    ids, mask = encode_prompts(tok, [ex.question for ex in questions for _ in range(cfg.samples)], bb.device,
                               system=cfg.system)
    gen = GenerationConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, seed=seed, use_memory=False)
    result = generate(bb, ids, mask, None, gen, monitor=False)
    records = []
    for q, example in enumerate(questions):
        rows = result.tokens[q * cfg.samples:(q + 1) * cfg.samples]
        texts = [tok.decode(t, skip_special_tokens=True).strip() for t in rows]
        ended = [bool(t) and t[-1] == tok.eos_token_id for t in rows]
        # A solution cut off at max_new_tokens is not one the model finished: do not teach it.
        good = [t for t, e in zip(texts, ended) if e and is_correct(t, example.final, example.kind)]
        records.append({"key": question_key(example), "tried": len(texts), "kept": sorted(set(good))})
    return records


def build_self_targets(bb: Backbone, examples: list[Example], out: str | Path, cfg: SelfTargetSettings) -> list[Example]:
    """Examples whose answers are the backbone's own correct solutions (one per distinct kept sample).

    out: a folder (the cache is OUT/self_targets.jsonl) or a .jsonl file, which several runs (one per
    method) can share so that every memory learns the same targets."""
    out = Path(out)
    path = out if out.suffix == ".jsonl" else out / SELF_TARGETS
    path.parent.mkdir(parents=True, exist_ok=True)
    done = resume_cache(path)
    todo = [ex for ex in examples if question_key(ex) not in done]
    if cfg.reuse:
        todo = _reuse_solved(path, todo, Path(cfg.reuse), done)
    from tqdm import tqdm
    # Shown in log files too, like train's and eval's bars: collection runs for hours in the background.
    bar = tqdm(total=len(examples), initial=len(examples) - len(todo), desc="self targets", unit="q", file=sys.stderr)
    with torch.no_grad():
        for batch in batches(todo, cfg):
            records = sample_batch(bb, batch, cfg, seed=batch_seed(batch, cfg))
            append_records(path, records)
            done.update((r["key"], r) for r in records)
            bar.update(len(batch))
    bar.close()
    targets = [replace(ex, answer=text) for ex in examples for text in done[question_key(ex)]["kept"]]
    solved = sum(1 for ex in examples if done[question_key(ex)]["kept"])
    tried = sum(done[question_key(ex)]["tried"] for ex in examples)
    print(f"self targets: kept {len(targets)} of {tried} samples ({solved} of {len(examples)} questions "
          f"solved at least once) -> {path}", file=sys.stderr)
    return targets
