"""Offline assets for the eval and bench tests: a tiny random model folder with a byte-level
tokenizer (pad/bos/eos, chat template) and a small GSM8K-shaped JSONL set. Built in under a second."""
from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models as tk_models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from flashmem.models import tiny_model

SPECIALS = ["<pad>", "<s>", "</s>"]  # ids 0-2: tiny_model's pad/bos/eos
CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant: {% endif %}"
)


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """One token per byte, so any text (and any id the random model emits) round-trips."""
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for symbol in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[symbol] = len(vocab)
    tok = Tokenizer(tk_models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def model_dir(path, seed: int = 0) -> Path:
    path = Path(path)
    tokenizer = byte_tokenizer()
    tiny_model("llama", seed=seed, vocab_size=len(tokenizer)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def question_file(path, n: int) -> Path:
    rows = []
    for i in range(n):
        a, b = 2 + i % 7, 3 + i % 5
        rows.append({"question": f"What is {a} + {b}?", "answer": f"{a} + {b} = {a + b}.\n#### {a + b}"})
    path = Path(path)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
