"""`flashmem generate` end to end on a tiny model folder, and its one-line errors for bad input."""
import json

import pytest
from tiny_assets import make_tiny_model_dir
from transformers import GPT2Config

from flashmem.api import FlashMem
from flashmem.cli import main
from flashmem.memory.registry import save_memory


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("FLASHMEM_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def model_dir(tmp_path):
    return str(make_tiny_model_dir(tmp_path / "model"))


def run_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith(f"flashmem {argv[0]}: error:") and "Traceback" not in err
    return errors[0]


def test_generate_writes_answer_trace_and_plot(model_dir, tmp_path, capsys):
    trace, plot = tmp_path / "t.json", tmp_path / "t.png"
    assert main(["generate", "--model", model_dir, "--max-new-tokens", "12", "--trace", str(trace),
                 "--plot", str(plot), "What is 2 + 3?"]) == 0
    captured = capsys.readouterr()
    assert "UNTRAINED" in captured.err
    record = json.loads(trace.read_text())["traces"][0]
    assert record["threshold"] is not None and record["prompt_memory"]
    assert len(record["steps"]) == 12 and all("entropy" in s and "consolidated_after" in s for s in record["steps"])
    assert plot.stat().st_size > 1000
    assert main(["generate", "--model", model_dir, "--no-memory", "--max-new-tokens", "4", "hi"]) == 0


def test_unknown_alias(capsys):
    assert "smollm2-135m" in run_error(capsys, ["generate", "--model", "smollm9", "hi"])


def test_missing_path(capsys, tmp_path):
    assert "not found" in run_error(capsys, ["generate", "--model", str(tmp_path / "nope"), "hi"])


def test_unsupported_architecture(capsys, tmp_path):
    GPT2Config(n_layer=1, n_embd=16, n_head=2).save_pretrained(tmp_path / "gpt2")
    message = run_error(capsys, ["generate", "--model", str(tmp_path / "gpt2"), "hi"])
    assert "gpt2" in message and "llama" in message and "qwen3" in message


def test_empty_prompt(capsys, model_dir):
    assert "empty prompt" in run_error(capsys, ["generate", "--model", model_dir, "   "])


def test_prompt_longer_than_context(capsys, model_dir):
    assert "context" in run_error(capsys, ["generate", "--model", model_dir, "x" * 600])


def test_memory_made_for_another_backbone(capsys, tmp_path, model_dir):
    save_memory(FlashMem.load(model_dir).memory, tmp_path / "mem")
    other = str(make_tiny_model_dir(tmp_path / "other", seed=1))
    message = run_error(capsys, ["generate", "--model", other, "--memory", str(tmp_path / "mem"), "hi"])
    assert "another backbone" in message and "fingerprint" in message


def test_memory_folder_missing_or_corrupt(capsys, tmp_path, model_dir):
    assert "not found" in run_error(capsys, ["generate", "--model", model_dir, "--memory", str(tmp_path / "x"), "hi"])
    save_memory(FlashMem.load(model_dir).memory, tmp_path / "mem")
    weights = tmp_path / "mem" / "memory.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    assert "corrupt" in run_error(capsys, ["generate", "--model", model_dir, "--memory", str(tmp_path / "mem"), "hi"])


def test_every_command_has_help(capsys):
    for command in ("generate", "train", "calibrate", "eval", "bench", "demo"):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        assert "usage: flashmem " + command in capsys.readouterr().out
