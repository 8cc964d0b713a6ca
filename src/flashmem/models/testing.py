"""Tiny random models and a byte-level tokenizer, built from configs in milliseconds, for the tests
and for anyone checking flashmem on a machine without weights."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, pre_tokenizers
from tokenizers import models as tk_models
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

from ..errors import FlashmemError
from .backbone import SUPPORTED_MODEL_TYPES
from .loader import freeze

# Ids 0-2 match tiny_model's pad/bos/eos ids; the 256 byte symbols follow.
SPECIALS = ["<pad>", "<s>", "</s>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant: {% endif %}"
)


def tiny_model(model_type: str, seed: int = 0, **overrides: Any) -> Any:
    """A 2-layer random model of a supported family (float32, eval, frozen).

    overrides go into the config; `attn_implementation` (default "sdpa") goes to from_config.
    """
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise FlashmemError(
            f"model type '{model_type}' is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
    attn = overrides.pop("attn_implementation", "sdpa")
    fields: dict[str, Any] = dict(
        num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=128, vocab_size=256, max_position_embeddings=512,
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    if model_type == "qwen3":
        fields["head_dim"] = 16  # Qwen3 does not derive it from hidden/heads; q/k norms are built in
    fields.update(overrides)
    config = AutoConfig.for_model(model_type, **fields)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation=attn)
    return freeze(model)


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level tokenizer without merges: any text round-trips, one token per byte."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for symbol in sorted(alphabet):
        vocab[symbol] = len(vocab)
    tok = Tokenizer(tk_models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def make_tiny_model_dir(path: str | Path, model_type: str = "llama", seed: int = 0, **overrides: Any) -> Path:
    """Save a tiny random model plus the byte tokenizer into path (llama: transformers 5 swaps the
    tokenizer saved beside a qwen2 config for its own); overrides go to its config."""
    path = Path(path)
    tokenizer = tiny_tokenizer()
    model = tiny_model(model_type, seed=seed, **{"vocab_size": len(tokenizer), **overrides})
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
