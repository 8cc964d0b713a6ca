"""Multi-process training: `accelerate launch` with 2 CPU processes (gloo) trains, writes a loadable
memory, and logs the same losses as one process (the gradients are summed across processes)."""
import json
import os
import socket
import subprocess
import sys

import pytest
from tiny_assets import arithmetic_rows, make_tiny_model_dir, write_jsonl

from flashmem.cli import main
from flashmem.memory.registry import load_memory
from flashmem.models.loader import load_backbone

ARGS = ["--steps", "3", "--batch-size", "3", "--val-size", "2", "--eval-every", "3", "--threshold", "1.0",
        "--lr", "1e-2", "--min-gap", "3"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _losses(out) -> list[float]:
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return [r.get("loss", r.get("val_loss")) for r in records]


def test_two_processes_match_one(tmp_path):
    model = make_tiny_model_dir(tmp_path / "model")
    data = write_jsonl(tmp_path / "data.jsonl", arithmetic_rows(12))
    # On a machine without GPUs, accelerate's --multi_gpu launcher is torchrun; the processes join a
    # gloo group (`--cpu` alone would ask for mpirun to start more than one).
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(_free_port()), "-m", "flashmem"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    two = tmp_path / "two"
    proc = subprocess.run(launch + ["train", "--model", str(model), "--data", str(data), "--out", str(two), *ARGS],
                          env=env, capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("done: step 3/3") == 1  # only the main process reports and writes
    assert json.loads((two / "checkpoint" / "state.json").read_text())["world_size"] == 2
    one = tmp_path / "one"
    assert main(["train", "--model", str(model), "--data", str(data), "--out", str(one), *ARGS]) == 0
    assert _losses(two) == pytest.approx(_losses(one), abs=1e-5)
    memory = load_memory(two, load_backbone(str(model)))
    assert memory.config.threshold == 1.0
