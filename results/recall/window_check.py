"""Checks that the prompt window of the cut experiment keeps the whole question and never the answer: for each
recall split, how many prompts' last N tokens (chat template included) lack "Question:" or hold the value.

    python3 results/recall/window_check.py recall:context=512,facts=16 28 > results/recall/eval/cut_c512/window_check.json
"""
import json
import sys

from flashmem.api import FlashMem
from flashmem.data.datasets import load_examples
from flashmem.models.loader import load_backbone


def main(spec: str, window: int, limit: int = 500) -> None:
    bb = load_backbone("smollm2-135m")
    fm = FlashMem(bb, None)
    report = {"data": spec, "window": window, "items_per_split": limit}
    for split in ("train", "validation", "test"):
        examples, _ = load_examples(spec, split, None)
        tails = [bb.tokenizer.decode(fm.encode([ex.question])[0][0, -window:]) for ex in examples[:limit]]
        report[split] = {"question_cut": sum("Question:" not in t for t in tails),
                         "value_inside": sum(ex.final in t for ex, t in zip(examples, tails))}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
