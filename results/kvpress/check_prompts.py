"""Check, with flashmem's own code, that a kvpress records file asked flashmem's questions with flashmem's prompts.

Run with flashmem's .venv (not the kvpress one)::

    .venv/bin/python results/kvpress/check_prompts.py OUT/snapkv_k8.records.jsonl [--model smollm2-135m]

For every record it regenerates the item with flashmem's data loader, and checks its ``question_sha``
with ``flashmem.evaluation.evaluate.question_sha`` and its ``prompt_ids_sha`` (the prompt token ids
kvpress's pipeline sent, context + question) with the ids flashmem's own ``encode_prompts`` makes for
that question (chat template, no system prompt, as ``flashmem eval --prompt plain``). Exit status 1 on
any mismatch.
"""
from __future__ import annotations

import argparse
import hashlib
import sys

from flashmem.data.datasets import load_examples
from flashmem.data.prompts import encode_prompts
from flashmem.evaluation.evaluate import question_sha
from flashmem.evaluation.records import read_records
from flashmem.models.loader import load_backbone


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("records", help="a kvpress run's FILE.records.jsonl")
    p.add_argument("--model", default="smollm2-135m", help="flashmem model spec whose tokenizer to use")
    args = p.parse_args()
    header, rows = read_records(args.records)
    ident = header["identity"]
    examples, _ = load_examples(ident["data"], ident["split"], None)
    by_id = {ex.line: ex for ex in examples}
    tok = load_backbone(args.model, dtype="float32", device="cpu").tokenizer
    bad = 0
    for row in rows:
        ex = by_id[row["id"]]
        ids = encode_prompts(tok, [ex.question], "cpu")[0][0].tolist()
        sha = hashlib.sha1(",".join(map(str, ids)).encode()).hexdigest()[:12]
        ok = row["question_sha"] == question_sha(ex.question) and row.get("prompt_ids_sha") == sha \
            and row.get("prompt_tokens") == len(ids)
        bad += not ok
        print(f"item {row['id']}: {'same' if ok else 'DIFFERENT'} question and prompt ids ({len(ids)} tokens)")
    print(f"{len(rows) - bad} of {len(rows)} records match flashmem's questions and prompt ids")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
