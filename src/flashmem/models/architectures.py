"""Real model architectures with random weights, for speed work: the `random:NAME` model specs.

Speed and memory do not depend on the weights, and a lent GPU machine cannot download any. So a
stored architecture is a published `config.json` (its architecture fields, copied exactly) plus a
byte-level ChatML tokenizer; `build_random` builds the model straight on the target device in the
target dtype, initialised once, eval mode, frozen. Text through it is meaningless: never report an
accuracy or a loss measured on one of these.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, pre_tokenizers
from tokenizers import models as tk_models
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

from ..errors import FlashmemError

RANDOM_PREFIX = "random:"

# Qwen2.5 and Qwen3 publish 32,768 / 40,960 positions and document YaRN for 131,072. A 64k-token
# benchmark needs the positions; with random weights the rope scaling changes no cost (same
# shapes, same kernels), so only the limit is raised and the published rope is kept.
_LONG_CONTEXT = {"max_position_embeddings": 131072}


@dataclass(frozen=True)
class Architecture:
    """One published model: its config.json architecture fields, where they were read, and the
    benchmark's deliberate departures from them (each one explained where it is set)."""

    hub_id: str
    published_params: str  # as the model card states it; the tests check the built count
    config: dict[str, Any]
    source: str
    overrides: dict[str, Any] = field(default_factory=dict)


ARCHITECTURES: dict[str, Architecture] = {
    "qwen2.5-1.5b": Architecture(
        hub_id="Qwen/Qwen2.5-1.5B-Instruct",
        published_params="1.54B (1.31B non-embedding)",
        config=dict(
            model_type="qwen2", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
            num_attention_heads=12, num_key_value_heads=2, vocab_size=151936,
            max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-06,
            tie_word_embeddings=True, hidden_act="silu",
        ),
        # Qwen2 has q/k/v biases built in (its config has no attention_bias field).
        source=(
            "config.json of Qwen/Qwen2.5-1.5B-Instruct as copied (\"_name_or_path\": "
            "\"Qwen/Qwen2.5-1.5B-Instruct\") at huggingface.co/onnx-community/Qwen2.5-1.5B-Instruct/"
            "blob/94677ac90364afdc2b476788d085a9680efde737/config.json; the same values in "
            "huggingface.co/CMLL/ZhongJing-3-1_5b_V2 (a fine-tune of it). The official file itself "
            "was not in the searched corpus. 1.54B / 1.31B: the card of Qwen2.5-Coder-1.5B (same "
            "shapes) as mirrored in github.com/ZHUI/paddlenlp_model_readme; this card not re-read."
        ),
        overrides=_LONG_CONTEXT,
    ),
    "qwen2.5-7b": Architecture(
        hub_id="Qwen/Qwen2.5-7B-Instruct",
        published_params="7.61B (6.53B non-embedding)",
        config=dict(
            model_type="qwen2", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
            num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
            max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-06,
            tie_word_embeddings=False, hidden_act="silu",
        ),
        source=(
            "config.json saved from the official snapshot (\"_name_or_path\": \".../models--qwen--"
            "Qwen2.5-7B-Instruct/snapshots/acbd96531cda22292a3ceaa67e984955d3965282\") at "
            "huggingface.co/hakutaku/qwen2.5-ja-zh/blame/7e21b906dcef499c335c0e99ccf80c33e9ad3836/"
            "config.json; the same in huggingface.co/GreenBitAI/Qwen-2.5-7B-Instruct-layer-mix-bpw-4.0 "
            "(snapshot bb46c15e). The official file itself was not in the searched corpus; the "
            "parameter counts are the model card's, not re-read here (the built model has 7.616B)."
        ),
        overrides=_LONG_CONTEXT,
    ),
    "llama3.2-3b": Architecture(
        hub_id="meta-llama/Llama-3.2-3B-Instruct",
        published_params="3.21B",
        config=dict(
            model_type="llama", hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
            num_attention_heads=24, num_key_value_heads=8, head_dim=128, vocab_size=128256,
            max_position_embeddings=131072, rope_theta=500000.0,
            rope_scaling=dict(
                rope_type="llama3", factor=32.0, high_freq_factor=4.0, low_freq_factor=1.0,
                original_max_position_embeddings=8192,
            ),
            rms_norm_eps=1e-05, tie_word_embeddings=True, attention_bias=False, mlp_bias=False,
            hidden_act="silu",
        ),
        source=(
            "config.json of meta-llama/Llama-3.2-3B-Instruct as re-uploaded at huggingface.co/"
            "datasets/lhpku20010120/Llama-3.2-3B-Instruct/blob/main/config.json and in fine-tunes "
            "naming it (huggingface.co/lunahr/thea-c-3b-25r, huggingface.co/Sidreds06/MHCV1); the "
            "official repository is gated and was not in the searched corpus. 3.21B: the Open LLM "
            "leaderboard request for meta-llama/Llama-3.2-3B (huggingface.co/datasets/la-leaderboard/"
            "requests)."
        ),
    ),
    "qwen3-4b": Architecture(
        hub_id="Qwen/Qwen3-4B",
        published_params="4.0B (3.6B non-embedding)",
        config=dict(
            model_type="qwen3", hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
            num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=151936,
            max_position_embeddings=40960, rope_theta=1000000.0, rms_norm_eps=1e-06,
            tie_word_embeddings=True, attention_bias=False, hidden_act="silu",
        ),
        source=(
            "Qwen/Qwen3-4B's config as embedded (\"_name_or_path\": \"Qwen/Qwen3-4B\") in "
            "huggingface.co/Thrillcrazyer/LDS_4B/blob/main/config.json (read up to "
            "max_position_embeddings), the remaining fields from quantisations of it that agree with "
            "each other: huggingface.co/decompute/slm1 and huggingface.co/EdgeCompress01/"
            "Qwen3-4B-GPTQ-4bit. The official file itself was not in the searched corpus; the "
            "parameter counts are the model card's, not re-read here."
        ),
        overrides=_LONG_CONTEXT,
    ),
    "qwen2.5-coder-0.5b": Architecture(
        hub_id="Qwen/Qwen2.5-Coder-0.5B-Instruct",
        published_params="0.49B (0.36B non-embedding); 0.63B as the alias loads it (untied lm_head)",
        config=dict(
            model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
            num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
            max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-06,
            tie_word_embeddings=False, hidden_act="silu",
        ),
        # Untied on purpose: the `qwen2.5-coder-0.5b` alias (a GGUF with its own output matrix)
        # loads an lm_head apart from the embeddings, and this entry is there to time that model.
        source=(
            "config.json that the `qwen2.5-coder-0.5b` alias writes when it converts its GGUF "
            "(~/.cache/flashmem/qwen2.5-coder-0.5b/config.json: 24 layers, hidden 896, 14 heads / 2 "
            "KV heads, intermediate 4864, vocabulary 151,936, rope theta 1e6, tie_word_embeddings "
            "false); the upstream model ties its head (0.49B), the GGUF does not."
        ),
    ),
    "smollm2-135m": Architecture(
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        published_params="135M",
        config=dict(
            model_type="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
            num_attention_heads=9, num_key_value_heads=3, head_dim=64, vocab_size=49152,
            max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-05,
            tie_word_embeddings=True, attention_bias=False, mlp_bias=False, hidden_act="silu",
        ),
        source=(
            "config.json of HuggingFaceTB/SmolLM2-135M-Instruct as saved by a fine-tune "
            "(\"_name_or_path\": \"HuggingFaceTB/SmolLM2-135M-Instruct\") at huggingface.co/"
            "VIshalChak/SmolLM2-FT-DPO/blob/main/config.json; layers, widths, heads and vocabulary "
            "also match the GGUF this project loads (docs/environment.md). The official file itself "
            "was not in the searched corpus."
        ),
    ),
}

# ---- tokenizer ---------------------------------------------------------------------------------
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>")
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _byte_symbols() -> list[str]:
    """The printable stand-in of each byte 0..255 that byte-level BPE uses (GPT-2's table)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            symbols[byte] = chr(byte)
        else:
            symbols[byte] = chr(256 + extra)
            extra += 1
    return [symbols[b] for b in range(256)]


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level tokenizer: id b is byte b (0..255), then the ChatML specials (256..259).

    Any text round-trips, one token per byte. Pads on the left, ends turns with <|im_end|>, has a
    ChatML chat template. Ids past 259 (a model's real vocabulary) decode to nothing.
    """
    vocab = {symbol: byte for byte, symbol in enumerate(_byte_symbols())}
    backend = Tokenizer(tk_models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|pad|>",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.padding_side = "left"
    return tokenizer


# ---- model -------------------------------------------------------------------------------------
def architecture(name: str) -> Architecture:
    """The stored architecture for a name (case-insensitive); FlashmemError lists the known ones."""
    key = name.strip().lower()
    if key.startswith(RANDOM_PREFIX):
        key = key[len(RANDOM_PREFIX):]
    if key not in ARCHITECTURES:
        raise FlashmemError(
            f"unknown architecture '{name}'; known: {', '.join(sorted(ARCHITECTURES))} "
            f"(as a model spec: {RANDOM_PREFIX}NAME)"
        )
    return ARCHITECTURES[key]


def random_config(name: str, tokenizer: PreTrainedTokenizerFast | None = None, **overrides: Any):
    """The transformers config: published fields, then the benchmark's overrides, then the caller's.

    Special-token ids are the byte tokenizer's (the published ids lie outside it), so generation
    stops on the tokenizer's <|im_end|>.
    """
    arch = architecture(name)
    tokenizer = tokenizer or byte_tokenizer()
    fields = {**arch.config, **arch.overrides, **overrides}
    fields.update(
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model_type = fields.pop("model_type")
    return AutoConfig.for_model(model_type, **fields)


def _resolve_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    resolved = getattr(torch, str(dtype), None)
    if not isinstance(resolved, torch.dtype):
        raise FlashmemError(f"unknown dtype '{dtype}'; use e.g. bfloat16, float16 or float32")
    return resolved


def _construct(config, dtype: torch.dtype, attn_implementation: str):
    """from_config with one initialisation instead of two.

    Built plainly, every Linear/Embedding draws its torch default init at construction and then
    transformers' init_weights draws again (about 1.7x the time on CPU, measured on a 2-layer
    Qwen2.5-1.5B). Constructing under transformers' no_init_weights skips both; init_weights then
    runs once (it also ties the embeddings and, on the meta device, draws nothing).
    """
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # moved or gone in a later release: correct, only slower
        return AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn_implementation)
    with no_init_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn_implementation)
    model.init_weights()
    return model


def build_random(
    name: str,
    dtype: torch.dtype | str = torch.bfloat16,
    device: torch.device | str = "cpu",
    seed: int = 0,
    attn_implementation: str = "sdpa",
    **overrides: Any,
) -> tuple[Any, PreTrainedTokenizerFast]:
    """(model, tokenizer) for a stored architecture with random weights, built on `device`.

    The weights are created where they will live, in `dtype` (no CPU copy for a GPU, no float32
    pass), initialised once from `seed` (this seeds torch's global generators), eval mode, every
    parameter frozen. `overrides` replace config fields, e.g. num_hidden_layers=2 for a test;
    device="meta" gives the shapes without memory.
    """
    tokenizer = byte_tokenizer()
    config = random_config(name, tokenizer, **overrides)
    dtype = _resolve_dtype(dtype)
    torch.manual_seed(seed)
    # Inside the device context so init_weights sees the meta device (and then draws nothing).
    with torch.device(device):
        model = _construct(config, dtype, attn_implementation)
    model.eval()
    model.requires_grad_(False)
    return model, tokenizer
