"""A memory folder from a training run's checkpoint, so a run still in progress can be looked at (latent tokens,
a quick evaluation) without stopping it: the checkpoint's weights, its memory config and its train config.

    .venv/bin/python results/eviction/snapshot.py results/eviction/memories/one128_gist /tmp/one128_gist_s100
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from flashmem.config import MemoryConfig
from flashmem.training.trainer import TRAIN_CONFIG


def main(run: str, out: str) -> int:
    ckpt, folder = Path(run) / "checkpoint", Path(out)
    state = json.loads((ckpt / "state.json").read_text())
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ckpt / "memory.safetensors", folder / "memory.safetensors")
    MemoryConfig(**state["memory_config"]).save(folder)
    (folder / TRAIN_CONFIG).write_text(json.dumps(state["train_config"], indent=2) + "\n")
    print(f"{folder}: step {state['step']} of {run}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
