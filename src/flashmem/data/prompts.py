"""What the model reads: a question through its chat template (with an optional system prompt), and
batches of them left-padded."""
from __future__ import annotations

from typing import Any

import torch

from ..errors import FlashmemError

# System prompts by name. "boxed" is Qwen's own math-evaluation prompt: it asks for the final answer
# in the standard form the common harnesses extract (math-evaluation-harness: the last \boxed{}).
PROMPTS: dict[str, str | None] = {
    "plain": None,
    "boxed": "Please reason step by step, and put your final answer within \\boxed{}.",
}


def system_prompt(name: str) -> str | None:
    if name not in PROMPTS:
        raise FlashmemError(f"unknown prompt {name!r}; known: {', '.join(PROMPTS)}")
    return PROMPTS[name]


def format_prompt(tokenizer: Any, question: str, system: str | None = None) -> str:
    """The text the model sees for a question: its chat template, else a plain Q/A frame."""
    if not question or not question.strip():
        raise FlashmemError("empty prompt")
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": question})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prefix = f"{system}\n\n" if system else ""
    return f"{prefix}Question: {question}\nAnswer:"


def encode_prompts(tokenizer: Any, questions: list[str], device: torch.device | str = "cpu", chat: bool = True,
                   system: str | None = None, max_positions: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids and mask (B, T) on device; chat=False takes the texts as they are."""
    texts = [format_prompt(tokenizer, q, system) if chat else _nonempty(q) for q in questions]
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    longest = int(enc["attention_mask"].sum(-1).max())
    if max_positions is not None and longest >= max_positions:
        raise FlashmemError(f"prompt is {longest} tokens; the model's context is {max_positions} positions")
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


def _nonempty(prompt: str) -> str:
    if not prompt or not prompt.strip():
        raise FlashmemError("empty prompt")
    return prompt
