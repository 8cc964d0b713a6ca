"""Training checkpoints in OUT/checkpoint/: everything `flashmem train --resume` needs to continue
as if it had never stopped.

Files: memory.safetensors (trained weights, their own dtype), optimizer.pt (AdamW state),
state.json (step, scheduler, data order, RNG states of python/numpy/torch, resolved memory config,
arguments) and manifest.json (size and sha256 of each file, written last). A checkpoint is built in
a temporary folder and swapped in by renames, so a crash leaves the previous checkpoint intact: if
it happens between the two renames, the previous one is still found as `.checkpoint.old`.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import FlashmemError

CHECKPOINT_DIR = "checkpoint"
OLD_DIR = ".checkpoint.old"
FILES = ("memory.safetensors", "optimizer.pt", "state.json")
MANIFEST = "manifest.json"


@dataclass
class Checkpoint:
    weights: dict[str, torch.Tensor]
    optimizer: dict
    state: dict  # step, scheduler, data, rng, config, args, and whatever the trainer adds
    path: Path


def rng_state() -> dict:
    """Python, numpy and torch generator states as JSON-safe values."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state().tolist(),
    }


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path: Path, value: dict) -> None:
    with path.open("w") as handle:
        json.dump(value, handle)
        handle.flush()
        os.fsync(handle.fileno())


def save_checkpoint(out: str | Path, weights: dict[str, torch.Tensor], optimizer: dict, state: dict) -> Path:
    """Write OUT/checkpoint atomically; returns its path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".checkpoint.tmp-", dir=out))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; a checkpoint is an ordinary folder
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, str(tmp / FILES[0]))
        torch.save(optimizer, tmp / FILES[1])
        _write_json(tmp / FILES[2], state)
        for name in FILES[:2]:  # safetensors and torch.save do not fsync
            with (tmp / name).open("rb+") as handle:
                os.fsync(handle.fileno())
        manifest = {name: {"bytes": (tmp / name).stat().st_size, "sha256": _sha256(tmp / name)} for name in FILES}
        _write_json(tmp / MANIFEST, manifest)
        _fsync_dir(tmp)
        final, old = out / CHECKPOINT_DIR, out / OLD_DIR
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            os.replace(final, old)  # a directory cannot be replaced in one rename
        os.replace(tmp, final)
        _fsync_dir(out)
        shutil.rmtree(old, ignore_errors=True)
        return final
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def find_checkpoint(out: str | Path) -> Path | None:
    """OUT/checkpoint, or the previous one if a save was cut between its two renames."""
    for name in (CHECKPOINT_DIR, OLD_DIR):
        path = Path(out) / name
        if path.is_dir():
            return path
    return None


def load_checkpoint(out: str | Path) -> Checkpoint:
    """Read and verify a checkpoint; any missing, truncated or altered file is a FlashmemError naming it."""
    path = find_checkpoint(out)
    if path is None:
        raise FlashmemError(f"--resume: no checkpoint in {out} (expected {Path(out) / CHECKPOINT_DIR})")
    manifest_path = path / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as err:
        raise FlashmemError(f"corrupt checkpoint: {manifest_path} is missing or unreadable ({err})") from None
    for name in FILES:
        file = path / name
        expected = manifest.get(name, {})
        if not file.is_file():
            raise FlashmemError(f"corrupt checkpoint: {file} is missing")
        size = file.stat().st_size
        if size != expected.get("bytes"):
            raise FlashmemError(f"corrupt checkpoint: {file} is {size} bytes, expected {expected.get('bytes')} (truncated?)")
        if _sha256(file) != expected.get("sha256"):
            raise FlashmemError(f"corrupt checkpoint: {file} does not match its checksum")
    try:
        weights = load_file(str(path / FILES[0]))
        optimizer = torch.load(path / FILES[1], weights_only=True)
        state = json.loads((path / FILES[2]).read_text())
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise FlashmemError(f"corrupt checkpoint in {path}: {err}") from None
    return Checkpoint(weights, optimizer, state, path)
