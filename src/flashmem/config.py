"""Configuration dataclasses: the memory (saved beside its weights) and one generation call."""
from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .errors import FlashmemError

METHODS = ("flashmem", "softprompt", "memgen")
CONFIG_NAME = "memory_config.json"


@dataclass
class MemoryConfig:
    """Everything that defines a latent memory and when it fires. Saved as JSON beside the weights."""

    method: str = "flashmem"
    """flashmem (shared-KV consolidator), softprompt (static learned vectors) or memgen (LoRA weaver)."""
    num_latents: int = 8
    """K: latent vectors made per consolidation."""
    num_layers: int = 1
    """L: decoder layers copied into the consolidator (the last L of the backbone)."""
    n_sinks: int = 4
    """Attention-sink positions (the first tokens) removed before the monitor's entropy."""
    threshold: float | None = None
    """Monitor threshold tau; None until calibrated."""
    percentile: float = 85.0
    """Percentile of validation entropies that calibration turns into tau."""
    budget: int = 2
    """Most monitor-triggered consolidations per response (the prompt-end one not counted)."""
    min_gap: int = 24
    """Fewest answer tokens between two consolidations."""
    prompt_memory: bool = True
    """Make memory once at the end of the prompt."""
    trigger_memory: bool = True
    """Make memory during decoding when the trigger fires (False: prompt-end memory only)."""
    trigger: str = "monitor"
    """monitor (entropy above tau) or delimiter (after ',', '.', newline: MemGen's insertion rule)."""
    lora_r: int = 16
    """MemGen weaver LoRA rank."""
    lora_alpha: int = 32
    """MemGen weaver LoRA alpha."""
    reprefill: bool = False
    """MemGen: re-prefill the reasoner's whole cache after each insertion, as MemGen's code does."""
    backbone: dict = field(default_factory=dict)
    """Identity of the backbone this memory was made for (name, dimensions, fingerprint)."""
    version: str = ""
    """flashmem version that wrote the config."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        checks = [
            (self.method in METHODS, f"method must be one of {METHODS}, got {self.method!r}"),
            (self.num_latents >= 1, f"num_latents must be >= 1, got {self.num_latents}"),
            (self.num_layers >= 1, f"num_layers must be >= 1, got {self.num_layers}"),
            (self.n_sinks >= 0, f"n_sinks must be >= 0, got {self.n_sinks}"),
            (self.threshold is None or math.isfinite(self.threshold) or self.threshold == math.inf,
             f"threshold must be a number, got {self.threshold!r}"),
            (0.0 < self.percentile < 100.0, f"percentile must be in (0, 100), got {self.percentile}"),
            (self.budget >= 0, f"budget must be >= 0, got {self.budget}"),
            (self.min_gap >= 1, f"min_gap must be >= 1, got {self.min_gap}"),
            (self.trigger in ("monitor", "delimiter"), f"trigger must be monitor or delimiter, got {self.trigger!r}"),
            (self.lora_r >= 1, f"lora_r must be >= 1, got {self.lora_r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise FlashmemError(f"invalid memory config: {message}")

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
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise FlashmemError(f"{path}: unknown fields {unknown}")
        return cls(**raw)


@dataclass
class GenerationConfig:
    """One generation call."""

    max_new_tokens: int = 256
    """Most tokens generated per row."""
    temperature: float = 0.0
    """0 is greedy; above 0 samples."""
    top_p: float = 1.0
    """Nucleus sampling mass (with temperature > 0)."""
    seed: int = 0
    """Seed of the sampler."""
    use_memory: bool = True
    """False: plain decoding (the monitor may still run for a trace)."""

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise FlashmemError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise FlashmemError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise FlashmemError(f"top_p must be in (0, 1], got {self.top_p}")


def atomic_write_text(path: Path, text: str) -> None:
    """Write a file so that a crash leaves either the old or the new content, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; these are ordinary result files
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
