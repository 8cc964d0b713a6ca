"""Round a trained memory's weights to bfloat16, in place, so that it fits the commit size (~40 MB).

Qwen2.5-Coder-0.5B's consolidator has 17.1M trainable parameters: 68 MB in float32, 34 MB in
bfloat16. Run this right after training and before any evaluation, so every published number comes
from the committed file (its digest is in each eval record's identity); `flashmem` loads it back into
the backbone's dtype. The float32 weights stay in the folder's checkpoint/ (not committed) for the
check that rounding moves nothing: the same questions evaluated with both.

    python3 results/to_bf16.py results/qwen/memories/flashmem
"""
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from flashmem.memory.registry import WEIGHTS_NAME


def round_folder(folder: Path) -> None:
    path = folder / WEIGHTS_NAME
    state = load_file(str(path))
    if all(v.dtype == torch.bfloat16 for v in state.values()):
        print(f"{path}: already bfloat16")
        return
    tmp = path.with_name(f".{WEIGHTS_NAME}.tmp")
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in state.items()}, str(tmp))
    tmp.replace(path)  # atomic: an interrupted run leaves the float32 file
    print(f"{path}: {sum(v.numel() for v in state.values()):,} weights rounded to bfloat16, "
          f"{path.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for arg in sys.argv[1:]:
        round_folder(Path(arg))
