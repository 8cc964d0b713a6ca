"""The Python API in one place: load a backbone, wrap it with memory, generate, read the trace.

    from flashmem import FlashMem
    fm = FlashMem.load("smollm2-135m", memory="runs/gsm8k")   # memory=None: untrained consolidator
    answer = fm.generate(["What is 12 * 7?"])[0]
    print(answer.text, answer.trace.consolidations)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .backbone import Backbone
from .config import GenerationConfig, MemoryConfig
from .engine import chunk_entropy, prefill
from .errors import FlashmemError
from .generation import RowTrace, generate
from .memory import LatentMemory, build_memory, load_memory
from .models import format_prompt, load_backbone

# Entropies of the last prompt positions stand in for a calibration the memory does not have yet.
PROMPT_CALIBRATION_POSITIONS = 256


@dataclass
class Answer:
    text: str
    tokens: list[int]
    trace: RowTrace


class FlashMem:
    """A frozen backbone with an optional latent memory."""

    def __init__(self, backbone: Backbone, memory: LatentMemory | None = None, trained: bool = True):
        self.backbone = backbone
        self.memory = memory
        self.trained = trained  # False: the memory is an untrained consolidator (a plumbing check)

    @classmethod
    def load(
        cls, model: str = "smollm2-135m", memory: str | None = None, dtype: str = "float32",
        config: MemoryConfig | None = None,
    ) -> "FlashMem":
        hf_model, tokenizer = load_backbone(model, dtype=dtype)
        backbone = Backbone(hf_model, tokenizer, name=model)
        if memory is not None:
            return cls(backbone, load_memory(memory, backbone), trained=True)
        return cls(backbone, build_memory(backbone, config or MemoryConfig()), trained=False)

    def encode(self, prompts: list[str], chat: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded ids and mask; the chat template is applied when the model has one."""
        tok = self.backbone.tokenizer
        texts = [format_prompt(tok, p) if chat else _nonempty(p) for p in prompts]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        longest = int(enc["attention_mask"].sum(-1).max())
        if longest >= self.backbone.max_positions:
            raise FlashmemError(
                f"prompt is {longest} tokens; the model's context is {self.backbone.max_positions} positions"
            )
        return enc["input_ids"].to(self.backbone.device), enc["attention_mask"].to(self.backbone.device)

    def ensure_threshold(self, ids: torch.Tensor, mask: torch.Tensor) -> float | None:
        """Give an uncalibrated memory a threshold from the prompts' own entropies; returns it if set here."""
        cfg = self.memory.config if self.memory is not None else None
        if cfg is None or cfg.threshold is not None:
            return None
        cfg.threshold = prompt_threshold(self.backbone, ids, mask, cfg.n_sinks, cfg.percentile)
        return cfg.threshold

    def generate(
        self, prompts: list[str], gen: GenerationConfig | None = None, chat: bool = True, monitor: bool = True
    ) -> list[Answer]:
        gen = gen or GenerationConfig()
        ids, mask = self.encode(prompts, chat=chat)
        if gen.use_memory:
            self.ensure_threshold(ids, mask)
        result = generate(self.backbone, ids, mask, self.memory, gen, monitor=monitor)
        tok = self.backbone.tokenizer
        return [
            Answer(tok.decode(tokens, skip_special_tokens=True), tokens, trace)
            for tokens, trace in zip(result.tokens, result.traces)
        ]


@torch.no_grad()
def prompt_threshold(bb: Backbone, ids: torch.Tensor, mask: torch.Tensor, n_sinks: int, percentile: float) -> float:
    """Percentile of the monitor's entropy over the prompts' last positions (a day-one stand-in)."""
    ids, mask = ids[:, -PROMPT_CALIBRATION_POSITIONS:], mask[:, -PROMPT_CALIBRATION_POSITIONS:]
    state, out = prefill(bb, ids, mask, n_sinks, want_query=True)
    entropy = chunk_entropy(bb, state, out.query)
    values = entropy[mask.bool()].float().cpu().numpy()
    return float(np.percentile(values, percentile)) if values.size else float("inf")


def _nonempty(prompt: str) -> str:
    if not prompt or not prompt.strip():
        raise FlashmemError("empty prompt")
    return prompt
