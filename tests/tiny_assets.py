"""Tiny offline assets for the training tests: a 2-layer random model folder with a byte-level
tokenizer (eos/pad and a chat template) and small JSONL datasets. Built in well under a second."""
from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models as tk_models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from flashmem.models import tiny_model

# Ids 0-2 match tiny_model's pad/bos/eos ids; the 256 byte symbols follow.
SPECIALS = ["<pad>", "<s>", "</s>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant: {% endif %}"
)


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level tokenizer without merges: any text round-trips, one token per byte."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for symbol in sorted(alphabet):
        vocab[symbol] = len(vocab)
    tok = Tokenizer(tk_models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def make_tiny_model_dir(path, model_type: str = "llama", seed: int = 0) -> Path:
    """Save a tiny random model plus tokenizer into path (llama: transformers 5 swaps the tokenizer
    saved beside a qwen2 config for its own)."""
    path = Path(path)
    tokenizer = tiny_tokenizer()
    model = tiny_model(model_type, seed=seed, vocab_size=len(tokenizer))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


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
