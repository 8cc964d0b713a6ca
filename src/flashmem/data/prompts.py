"""What the model reads: a question through its chat template (with an optional system prompt, or a frame
around the question itself), and batches of them left-padded."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

import torch

from ..errors import FlashmemError


@dataclass(frozen=True)
class UserTurn:
    """A prompt that frames the question in the user's turn instead of adding a system turn: `text` with
    {question} in it."""

    text: str

    def ask(self, question: str) -> str:
        return self.text.replace("{question}", question)  # not format(): the text may hold \boxed{}


Prompt = Union[str, UserTurn, None]  # a system prompt, a frame for the user's turn, or nothing

# Prompts by name. "boxed" is Qwen's own math-evaluation system prompt: it asks for the final answer in the
# standard form the common harnesses extract (math-evaluation-harness: the last \boxed{}). "memgen" is
# MemGen's GSM8K instruction and question frame, verbatim from its data builder (no space after the
# instruction's full stop), as the user's turn of the chat template.
PROMPTS: dict[str, Prompt] = {
    "plain": None,
    "boxed": "Please reason step by step, and put your final answer within \\boxed{}.",
    "memgen": UserTurn("Solve the math problem with proper reasoning, and make sure to put the FINAL ANSWER inside "
                       "\\boxed{}.Question: {question}\n"),
}


def system_prompt(name: str) -> Prompt:
    if name not in PROMPTS:
        raise FlashmemError(f"unknown prompt {name!r}; known: {', '.join(PROMPTS)}")
    return PROMPTS[name]


def format_prompt(tokenizer: Any, question: str, system: Prompt = None) -> str:
    """The text the model sees for a question: its chat template, else a plain Q/A frame. system: a system
    prompt, or a UserTurn that frames the question itself."""
    if not question or not question.strip():
        raise FlashmemError("empty prompt")
    framed = isinstance(system, UserTurn)
    if framed:
        question, system = system.ask(question), None
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": question})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if framed:  # the frame is the whole prompt, as MemGen feeds a model without a chat template
        return question
    prefix = f"{system}\n\n" if system else ""
    return f"{prefix}Question: {question}\nAnswer:"


def encode_prompts(tokenizer: Any, questions: list[str], device: torch.device | str = "cpu", chat: bool = True,
                   system: Prompt = None, max_positions: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
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
