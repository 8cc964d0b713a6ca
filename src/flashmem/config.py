"""Typed configuration values: the memory (saved beside its weights), one generation call, and the
backbone options every command shares.

Configs are frozen dataclasses: a new threshold is `replace(cfg, threshold=...)`, never a mutation
that something else must undo. Every field carries a one-line help (its `option()` metadata) that
the command line shows, and `__post_init__` validates with an error naming the bad value.
"""
from __future__ import annotations

import json
import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import FlashmemError
from .files import atomic_write_text

CONFIG_NAME = "memory_config.json"
TRIGGERS = ("monitor", "delimiter", "always")
ENTROPIES = ("raw", "normalized")
DTYPES = ("auto", "float32", "bfloat16", "float16")
READOUTS = ("linear", "soft-token")


def option(default: Any = MISSING, help: str = "", *, default_factory: Any = MISSING, choices=None,
           flag: str | None = None, positional: bool = False, cli: bool = True, metavar: str | None = None) -> Any:
    """A dataclass field with the metadata the command line is derived from (see cli/options.py)."""
    meta = {"help": help, "choices": choices, "flag": flag, "positional": positional, "cli": cli, "metavar": metavar}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def check(rules: list[tuple[bool, str]], what: str) -> None:
    """Raise one FlashmemError for the first rule that does not hold."""
    for ok, message in rules:
        if not ok:
            raise FlashmemError(f"invalid {what}: {message}")


@dataclass(frozen=True)
class MemoryConfig:
    """Everything that defines a latent memory and when it fires. Saved as JSON beside the weights."""

    method: str = option("flashmem", "flashmem (shared-KV consolidator), softprompt or memgen (LoRA weaver)", cli=False)
    num_latents: int = option(8, "K: latent vectors made per consolidation")
    num_layers: int = option(1, "L: decoder layers copied into the consolidator (the last L)")
    n_sinks: int = option(4, "attention-sink positions (the first tokens) removed before the monitor's entropy")
    threshold: float | None = option(None, "monitor threshold tau (default: from the percentile)")
    percentile: float = option(85.0, "entropy percentile that calibration turns into tau")
    budget: int = option(2, "most triggered consolidations per answer (the prompt-end one not counted)")
    min_gap: int = option(24, "fewest answer tokens between two consolidations")
    prompt_memory: bool = option(True, "make memory once at the end of the prompt")
    trigger_memory: bool = option(True, "make memory during decoding when the trigger fires (off: prompt-end only)")
    entropy: str = option("raw", "the monitor's signal: raw (the paper's entropy) or normalized (divided by log n "
                          "of the visible non-sink keys, its maximum, so a fixed tau does not fire more late in long "
                          "answers)", choices=ENTROPIES)
    trigger: str = option("monitor", "monitor (entropy above tau), delimiter (after ',', '.', newline: MemGen's "
                          "rule) or always (whenever budget and gap allow: fixed benchmark schedules)", choices=TRIGGERS)
    prompt_window: int = option(0, "after the prompt-end memory, cut the prompt from the cache but its attention "
                                "sinks and read its last N tokens again after the memory (0: off): the rest of the "
                                "prompt then reaches the answer only through the memory")
    query_agnostic: bool = option(False, "with prompt_window N: make the prompt-end memory before the prompt's last "
                                  "N tokens (the question) are read, so it holds the document whatever is asked "
                                  "(flashmem's own extension; off: the paper's memory, made after the question)")
    write_lora_r: int = option(0, "flashmem's own extension: a LoRA of this rank on every layer's key/value "
                               "projections, on only while the latents are written into the cache, so the memory "
                               "writes every layer's entries rather than one input vector each (0: off, the paper's "
                               "design; alpha is twice the rank)")
    readout: str = option("linear", "how the consolidator turns its output into a latent: linear (the paper's: a "
                          "learned projection) or soft-token (flashmem's own extension: the frozen LM head's "
                          "distribution over tokens, as the expected token embedding, plus the projection; a "
                          "latent then restates tokens the frozen model already knows how to read)",
                          choices=READOUTS)
    step_queries: bool = option(False, "flashmem's own extension: a learned vector per latent, added to the "
                                "consolidator's input at that latent's step (zero at the start: the untrained "
                                "consolidator is the paper's), so each latent can learn a query of its own (which "
                                "part of a fact it copies) rather than derive it from the previous latent alone")
    lora_r: int = option(16, "MemGen weaver LoRA rank")
    lora_alpha: int = option(32, "MemGen weaver LoRA alpha")
    reprefill: bool = option(False, "MemGen: re-prefill the reasoner's whole cache after each insertion, as its code does")
    backbone: dict = option(default_factory=dict, help="identity of the backbone this memory was made for", cli=False)
    version: str = option("", "flashmem version that wrote the config", cli=False)

    def __post_init__(self) -> None:
        # The method name is checked against the registry when a memory is built or loaded.
        check([
            (isinstance(self.method, str) and bool(self.method), f"method must be a name, got {self.method!r}"),
            (self.num_latents >= 1, f"num_latents must be >= 1, got {self.num_latents}"),
            (self.num_layers >= 1, f"num_layers must be >= 1, got {self.num_layers}"),
            (self.n_sinks >= 0, f"n_sinks must be >= 0, got {self.n_sinks}"),
            (self.threshold is None or (isinstance(self.threshold, (int, float)) and not math.isnan(self.threshold)),
             f"threshold must be a number, got {self.threshold!r}"),
            (0.0 < self.percentile < 100.0, f"percentile must be in (0, 100), got {self.percentile}"),
            (self.budget >= 0, f"budget must be >= 0, got {self.budget}"),
            (self.min_gap >= 1, f"min_gap must be >= 1, got {self.min_gap}"),
            (self.trigger in TRIGGERS, f"trigger must be one of {', '.join(TRIGGERS)}, got {self.trigger!r}"),
            (self.entropy in ENTROPIES, f"entropy must be raw or normalized, got {self.entropy!r}"),
            (self.readout in READOUTS, f"readout must be one of {', '.join(READOUTS)}, got {self.readout!r}"),
            (self.lora_r >= 1, f"lora_r must be >= 1, got {self.lora_r}"),
            (self.write_lora_r >= 0, f"write_lora_r must be >= 0, got {self.write_lora_r}"),
            (self.prompt_window >= 0, f"prompt_window must be >= 0, got {self.prompt_window}"),
            # MemGen's weaver re-reads the token ids and re-prefills from them: a masked cache hides nothing from it.
            (self.prompt_window == 0 or not (self.reprefill or self.method == "memgen"),
             "prompt_window needs a memory that reads the cache (flashmem, softprompt), not MemGen's weaver"),
            (not self.step_queries or self.method == "flashmem", "step_queries are the consolidator's: method flashmem"),
            (not self.query_agnostic or self.prompt_window > 0,
             "query_agnostic needs prompt_window > 0: the window is the question the memory must not see"),
        ], "memory config")

    @property
    def fires_on_entropy(self) -> bool:
        """Whether the monitor's threshold decides when memory is made during decoding."""
        return self.trigger_memory and self.budget > 0 and self.trigger == "monitor"

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / CONFIG_NAME
        atomic_write_text(path, json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def load(cls, folder: str | Path) -> "MemoryConfig":
        path = Path(folder) / CONFIG_NAME
        if not path.is_file():
            raise FlashmemError(f"not a memory folder: {path} is missing")
        try:
            raw = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise FlashmemError(f"corrupt memory config {path}: {err}") from None
        unknown = sorted(set(raw) - {f.name for f in fields(cls)})
        if unknown:
            raise FlashmemError(f"{path}: unknown fields {unknown}")
        return cls(**raw)


@dataclass(frozen=True)
class GenerationConfig:
    """One generation call."""

    max_new_tokens: int = option(256, "most tokens generated per answer")
    temperature: float = option(0.0, "0 is greedy; above 0 samples")
    top_p: float = option(1.0, "nucleus sampling mass (with temperature > 0)")
    seed: int = option(0, "seed of the sampler")
    use_memory: bool = option(True, "False: plain decoding (the monitor may still run for a trace)")
    compact: bool = option(True, "drop finished rows from the batch as they finish (same tokens, less compute)")
    static_cache: bool = option(False, "preallocate the cache for the prompt, the answer and every memory slot "
                                "(transformers' StaticCache): each step writes in place instead of copying every "
                                "layer's keys and values; the same tokens")
    compile: bool = option(False, "decode each step as one torch.compile graph of fixed shape (the forward, the last "
                           "layer's query and the monitor's entropy) on a preallocated cache (implies static_cache); "
                           "the same tokens; compiling takes seconds to minutes per batch size and cache size")
    prompt_window: int | None = option(None, "cut the prompt but its sinks after the prompt-end memory and re-read "
                                       "its last N tokens (None: the memory's own prompt_window; 0 without a memory)")

    def __post_init__(self) -> None:
        check([
            (self.prompt_window is None or self.prompt_window >= 0,
             f"prompt_window must be >= 0, got {self.prompt_window}"),
            (self.max_new_tokens >= 1, f"max_new_tokens must be >= 1, got {self.max_new_tokens}"),
            (self.temperature >= 0, f"temperature must be >= 0, got {self.temperature}"),
            (0.0 < self.top_p <= 1.0, f"top_p must be in (0, 1], got {self.top_p}"),
        ], "generation config")


@dataclass(frozen=True, kw_only=True)
class ModelOptions:
    """Which backbone a command runs on and where: the fields every command config starts with."""

    model: str = option("smollm2-135m", "alias (smollm2-135m, the embedded default; qwen2.5-coder-0.5b, "
                        "installed on first use), random:NAME, hub id, local folder or .gguf file")
    dtype: str = option("auto", "backbone dtype (auto: bfloat16 on CUDA, float32 on CPU)", choices=DTYPES)
    device: str = option("auto", "auto (CUDA when available), cpu, cuda or cuda:N")

    def __post_init__(self) -> None:
        check([
            (bool(self.model.strip()), "--model must not be empty"),
            (self.dtype in DTYPES, f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}"),
            (self.device in ("auto", "cpu") or self.device.startswith("cuda"),
             f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}"),
        ], "model options")
