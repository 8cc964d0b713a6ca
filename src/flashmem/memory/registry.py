"""The memory methods by name, and memory folders: build, save, load, check against the backbone.

A method is a LatentMemory subclass with a `method` name, its own insertion-policy `defaults` and
whether it `reads_context`; adding one is one entry in METHODS. A memory folder holds the trained
weights (`memory.safetensors`, only what trains) and the MemoryConfig (JSON) with the identity of
the backbone it was made for; loading refuses another backbone or damaged weights.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..config import MemoryConfig
from ..errors import FlashmemError
from ..models.backbone import Backbone
from ..version import __version__
from .base import LatentMemory
from .consolidator import Consolidator
from .memgen import MemGenWeaver
from .softprompt import SoftPrompt

METHODS: dict[str, type[LatentMemory]] = {cls.method: cls for cls in (Consolidator, SoftPrompt, MemGenWeaver)}
METHOD_NAMES = tuple(METHODS)
WEIGHTS_NAME = "memory.safetensors"


def method_class(name: str) -> type[LatentMemory]:
    if name not in METHODS:
        raise FlashmemError(f"unknown memory method {name!r}; known: {', '.join(METHOD_NAMES)}")
    return METHODS[name]


def default_config(method: str, **overrides) -> MemoryConfig:
    """The method's own MemoryConfig (its insertion policy), with overrides (validated)."""
    return MemoryConfig(**{**method_class(method).defaults, **overrides, "method": method})


def build_memory(backbone: Backbone, config: MemoryConfig, dtype: torch.dtype | None = None) -> LatentMemory:
    """A fresh (untrained) memory of config.method for this backbone, in dtype (default: the backbone's)."""
    if not config.backbone:
        config = replace(config, backbone=backbone.identity())
    memory = method_class(config.method)(backbone, config)
    return memory.to(device=backbone.device, dtype=dtype or backbone.dtype)


def save_memory(memory: LatentMemory, folder: str | Path, config: MemoryConfig | None = None) -> None:
    """Write only what was trained, plus the config (default: the memory's own); both replaced atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{WEIGHTS_NAME}.tmp"
    save_file({k: v.float().cpu() for k, v in memory.trainable_state().items()}, str(tmp))
    tmp.replace(folder / WEIGHTS_NAME)
    replace(config or memory.config, version=__version__).save(folder)


def load_memory(folder: str | Path, backbone: Backbone, dtype: torch.dtype | None = None) -> LatentMemory:
    """Load a memory folder, refusing one made for another backbone or with damaged weights."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FlashmemError(f"memory folder not found: {folder}")
    config = MemoryConfig.load(folder)
    problem = identity_mismatch(config.backbone, backbone)
    if problem:
        raise FlashmemError(f"memory {folder} was made for another backbone: {problem}")
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise FlashmemError(f"memory folder {folder} has no {WEIGHTS_NAME}")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as err:
        raise FlashmemError(f"corrupt memory weights {weights}: {err}") from None
    memory = build_memory(backbone, config, dtype)
    load_trained_state(memory, state, str(weights))
    return memory


def load_trained_state(memory: LatentMemory, state: dict[str, torch.Tensor], where: str) -> None:
    """Put saved trained weights into a memory after checking they are exactly its trainable set."""
    expected = memory.trainable_state()
    if set(state) != set(expected) or any(state[k].shape != expected[k].shape for k in state):
        raise FlashmemError(f"{where} does not hold the weights of a {memory.config.method} memory for this backbone")
    device = next(iter(expected.values())).device
    memory.load_state_dict({k: v.to(device) for k, v in state.items()}, strict=False)


def identity_mismatch(saved: dict, backbone: Backbone) -> str:
    """'' when the saved identity matches the backbone, else what differs (field: saved vs now)."""
    now = backbone.identity()
    keys = [k for k in saved if k != "name"] or list(now)
    diffs = [f"{k}: {saved.get(k)!r} vs {now.get(k)!r}" for k in keys if saved.get(k) != now.get(k)]
    if diffs and saved.get("name") != now.get("name"):
        diffs.insert(0, f"name: {saved.get('name')!r} vs {now.get('name')!r}")
    return "; ".join(diffs)
