"""Where a job runs: the device, the backbone's dtype on it, and the number of CPU threads."""
from __future__ import annotations

import torch

from ..errors import FlashmemError

DTYPE_NAMES = ("float32", "bfloat16", "float16")


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """auto -> the first CUDA device when there is one, else the CPU; cpu, cuda and cuda:N as given."""
    spec = (str(spec) or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not spec.startswith(("cpu", "cuda")):
        raise FlashmemError(f"unknown device {spec!r}: use auto, cpu, cuda or cuda:N")
    try:
        device = torch.device(spec)
    except RuntimeError as err:
        raise FlashmemError(f"unknown device {spec!r}: {err}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise FlashmemError(f"device {spec!r} asked for, but this torch sees no CUDA device")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise FlashmemError(f"device {spec!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    return device


def resolve_dtype(spec: str, device: torch.device) -> str:
    """auto -> bfloat16 on CUDA (what GPUs are fast at), float32 on the CPU (exact; bf16 is slower without AMX)."""
    if spec == "auto":
        return "bfloat16" if device.type == "cuda" else "float32"
    if spec not in DTYPE_NAMES:
        raise FlashmemError(f"unknown dtype {spec!r}; use auto or one of {', '.join(DTYPE_NAMES)}")
    return spec


def set_threads(threads: int | None) -> None:
    """torch's CPU threads (None: leave torch's default). 1 is far steadier on a shared machine."""
    if threads is None:
        return
    if threads < 1:
        raise FlashmemError(f"--threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
