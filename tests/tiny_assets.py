"""Tiny offline assets for the training tests: small JSONL datasets (the tiny model folders and the byte
tokenizer live in flashmem.models.testing)."""
from __future__ import annotations

import json
from pathlib import Path

from flashmem.models.testing import make_tiny_model_dir, tiny_tokenizer  # noqa: F401  (re-exported for the tests)


def arithmetic_rows(n: int) -> list[dict]:
    """Short GSM8K-shaped rows; deterministic."""
    rows = []
    for i in range(n):
        a, b = 2 + i % 7, 3 + i % 5
        rows.append({"question": f"What is {a} + {b}?", "answer": f"{a} + {b} = {a + b}\n#### {a + b}"})
    return rows


def write_jsonl(path, rows: list) -> Path:
    path = Path(path)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path
