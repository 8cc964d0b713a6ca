"""Training checkpoints: round trip, RNG states, atomic replacement, refusal of damaged files."""
import json
import random

import numpy as np
import pytest
import torch

from flashmem.errors import FlashmemError
from flashmem.training import checkpoint
from flashmem.training.checkpoint import find_checkpoint, load_checkpoint, rng_state, save_checkpoint, set_rng_state


def _parts(value: float = 1.0):
    weights = {"layer.weight": torch.full((3, 4), value), "seed.bias": torch.arange(4.0)}
    param = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([param], lr=0.1)
    param.grad = torch.ones(2)
    opt.step()
    return weights, opt.state_dict(), {"step": int(value), "rng": rng_state(), "args": {"lr": 0.1}}


def test_round_trip(tmp_path):
    weights, opt, state = _parts(2.0)
    path = save_checkpoint(tmp_path, weights, opt, state)
    assert path == tmp_path / "checkpoint"
    ckpt = load_checkpoint(tmp_path)
    assert torch.equal(ckpt.weights["layer.weight"], weights["layer.weight"])
    assert ckpt.state["step"] == 2
    assert torch.equal(ckpt.optimizer["state"][0]["exp_avg"], opt["state"][0]["exp_avg"])
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint"]  # no temporary folder left


def test_rng_state_restores_every_generator():
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    saved = json.loads(json.dumps(rng_state()))  # goes through JSON in the checkpoint
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(saved)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


def test_crash_while_saving_keeps_previous(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, *_parts(1.0))

    def disk_full(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", disk_full)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path, *_parts(2.0))
    assert load_checkpoint(tmp_path).state["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint"]


def test_crash_between_renames_finds_previous(tmp_path):
    save_checkpoint(tmp_path, *_parts(1.0))
    (tmp_path / "checkpoint").rename(tmp_path / ".checkpoint.old")  # the state after the first rename
    assert find_checkpoint(tmp_path) == tmp_path / ".checkpoint.old"
    assert load_checkpoint(tmp_path).state["step"] == 1
    save_checkpoint(tmp_path, *_parts(3.0))  # the next save cleans up
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


@pytest.mark.parametrize("name", ["memory.safetensors", "optimizer.pt", "state.json"])
def test_truncated_file_is_named(tmp_path, name):
    save_checkpoint(tmp_path, *_parts())
    file = tmp_path / "checkpoint" / name
    file.write_bytes(file.read_bytes()[:-7])
    with pytest.raises(FlashmemError, match=f"{name}.*truncated"):
        load_checkpoint(tmp_path)


def test_altered_and_missing_files(tmp_path):
    save_checkpoint(tmp_path, *_parts())
    file = tmp_path / "checkpoint" / "state.json"
    data = bytearray(file.read_bytes())
    data[5] ^= 1
    file.write_bytes(bytes(data))
    with pytest.raises(FlashmemError, match="state.json does not match its checksum"):
        load_checkpoint(tmp_path)
    (tmp_path / "checkpoint" / "manifest.json").unlink()
    with pytest.raises(FlashmemError, match="manifest.json"):
        load_checkpoint(tmp_path)
    with pytest.raises(FlashmemError, match="no checkpoint"):
        load_checkpoint(tmp_path / "elsewhere")
