"""The Python API in one place: load a backbone, wrap it with memory, generate, read the trace.

    from flashmem import FlashMem
    fm = FlashMem.load("smollm2-135m", memory="runs/gsm8k")   # memory=None: untrained consolidator
    answer = fm.generate(["What is 12 * 7?"])[0]
    print(answer.text, answer.trace.consolidations)
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from .config import GenerationConfig, MemoryConfig
from .data.prompts import encode_prompts
from .decoding.generation import RowTrace, generate
from .memory.base import LatentMemory
from .memory.registry import build_memory, default_config, load_memory
from .models.backbone import Backbone
from .models.loader import load_backbone
from .training.thresholds import needs_threshold, prompt_threshold


@dataclass
class Answer:
    text: str
    tokens: list[int]
    trace: RowTrace


class FlashMem:
    """A frozen backbone with an optional latent memory and the insertion policy it runs with."""

    def __init__(self, backbone: Backbone, memory: LatentMemory | None = None, trained: bool = True,
                 config: MemoryConfig | None = None, system: str | None = None):
        self.backbone = backbone
        self.system = system  # the system prompt every question is asked with (prompts.PROMPTS)
        self.memory = memory
        self.trained = trained  # False: the memory is an untrained consolidator (a plumbing check)
        self.config = config if config is not None else (memory.config if memory is not None else None)

    @classmethod
    def load(cls, model: str = "smollm2-135m", memory: str | None = None, dtype: str = "auto",
             device: str = "auto", config: MemoryConfig | None = None) -> "FlashMem":
        backbone = load_backbone(model, dtype=dtype, device=device)
        if memory is not None:
            loaded = load_memory(memory, backbone)
            return cls(backbone, loaded, trained=True, config=config or loaded.config)
        return cls(backbone, build_memory(backbone, config or default_config("flashmem")), trained=False)

    def encode(self, prompts: list[str], chat: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded ids and mask; the chat template is applied when the model has one."""
        bb = self.backbone
        return encode_prompts(bb.tokenizer, prompts, bb.device, chat=chat, system=self.system,
                              max_positions=bb.max_positions)

    def ensure_threshold(self, ids: torch.Tensor, mask: torch.Tensor) -> float | None:
        """Give an uncalibrated memory a threshold from the prompts' own entropies; returns it if set here."""
        if not needs_threshold(self.config):
            return None
        self.config = replace(self.config, threshold=prompt_threshold(self.backbone, ids, mask, self.config))
        return self.config.threshold

    def generate(self, prompts: list[str], gen: GenerationConfig | None = None, chat: bool = True,
                 monitor: bool = True) -> list[Answer]:
        gen = gen or GenerationConfig()
        ids, mask = self.encode(prompts, chat=chat)
        if gen.use_memory:
            self.ensure_threshold(ids, mask)
        result = generate(self.backbone, ids, mask, self.memory, gen, monitor=monitor, policy=self.config)
        tok = self.backbone.tokenizer
        return [Answer(tok.decode(tokens, skip_special_tokens=True), tokens, trace)
                for tokens, trace in zip(result.tokens, result.traces)]
