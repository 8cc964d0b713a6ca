"""Split the sampled self-target collection of `run.sh flashmem-sampled` over processes (one core each).

    python3 results/qwen/collect_shards.py sample I N   # shard I of N (0-based): every Nth generate call
    python3 results/qwen/collect_shards.py merge        # finished calls' records into self_targets_sampled.jsonl

`flashmem train` samples its questions one generate call after another on one core. The plan (which
questions go in which call, and so each call's seed) is the one train makes (targets.batches and
targets.batch_seed), written once to self_targets_plan.json so that it stays fixed while calls finish in any
order. Each shard appends to its own file and resumes there; `merge` copies every finished call into the
shared file, after which `bash results/qwen/run.sh flashmem-sampled` finds those questions done.
"""
import json
import sys
from pathlib import Path

import torch

from flashmem.models.loader import load_backbone
from flashmem.training.targets import (
    append_records,
    batch_seed,
    batches,
    question_key,
    read_cache,
    resume_cache,
    sample_batch,
)
from flashmem.training.train import TrainConfig, load_data, self_target_settings

R = Path("results/qwen")
TARGETS, PLAN = R / "self_targets_sampled.jsonl", R / "self_targets_plan.json"
# run.sh's TRAIN flags with the flashmem-sampled stage's own.
CFG = TrainConfig(model="qwen2.5-coder-0.5b", data="gsm8k", out=str(R / "memories/flashmem_sampled"), limit=864,
                  targets="self", self_samples=4, self_temperature=0.7, self_max_new_tokens=512, self_batch_size=48,
                  self_targets_file=str(TARGETS), self_reuse=str(R / "self_targets.jsonl"), max_length=768,
                  on_bad_data="skip", steps=100, batch_size=4, seed=0, prompt="boxed")


def shard_file(i: int) -> Path:
    return R / f"self_targets_sampled.shard{i}.jsonl"


def make_plan() -> list[list[str]]:
    """The calls train would still make: training questions first, then the held-out ones, as train does."""
    settings, done = self_target_settings(CFG), read_cache(TARGETS)
    solved = {k for k, r in read_cache(Path(CFG.self_reuse)).items() if r["kept"]}
    plan = []
    for examples in load_data(CFG)[:2]:
        todo = [ex for ex in examples if question_key(ex) not in done and question_key(ex) not in solved]
        plan += [[question_key(ex) for ex in batch] for batch in batches(todo, settings)]
    return plan


def load_plan() -> list[list[str]]:
    if not PLAN.is_file():
        PLAN.write_text(json.dumps(make_plan()) + "\n")
    return json.loads(PLAN.read_text())


def sample(i: int, n: int) -> None:
    torch.set_num_threads(1)
    plan, settings = load_plan(), self_target_settings(CFG)
    path = shard_file(i)
    done = read_cache(TARGETS) | resume_cache(path)
    mine = [keys for b, keys in enumerate(plan) if b % n == i and not all(k in done for k in keys)]
    by_key = {question_key(ex): ex for examples in load_data(CFG)[:2] for ex in examples}
    bb = load_backbone(CFG.model, dtype=CFG.dtype, device="cpu")
    print(f"shard {i} of {n}: {len(mine)} calls left", file=sys.stderr, flush=True)
    with torch.no_grad():
        for c, keys in enumerate(mine, 1):
            batch = [by_key[k] for k in keys]
            append_records(path, sample_batch(bb, batch, settings, seed=batch_seed(batch, settings)))
            print(f"shard {i}: call {c} of {len(mine)} done", file=sys.stderr, flush=True)


def merge() -> None:
    """Append each finished call's records to the shared file (in plan order; unfinished calls wait)."""
    plan, done = load_plan(), read_cache(TARGETS)
    found = {}
    for path in sorted(R.glob("self_targets_sampled.shard*.jsonl")):
        found |= read_cache(path)
    new, waiting = [], 0
    for keys in plan:
        if all(k in done for k in keys):
            continue
        if all(k in found for k in keys):
            new += [found[k] for k in keys]
        else:
            waiting += 1
    if new:
        append_records(TARGETS, new)
    print(f"merged {len(new)} questions into {TARGETS}; {waiting} of {len(plan)} calls not finished yet")


if __name__ == "__main__":
    if sys.argv[1:2] == ["sample"] and len(sys.argv) == 4:
        sample(int(sys.argv[2]), int(sys.argv[3]))
    elif sys.argv[1:] == ["merge"]:
        merge()
    else:
        sys.exit(__doc__)
