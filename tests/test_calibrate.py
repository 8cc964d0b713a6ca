"""Thresholds: calibration takes the percentile of free-decoding entropies and returns a new config (the
old one is untouched); before training, tau comes from the untrained system's answer entropies; the
prompt stand-in reads the right sinks and leaves undefined positions out."""
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from tiny_assets import arithmetic_rows, make_tiny_model_dir, write_jsonl

from flashmem.cli import main
from flashmem.config import GenerationConfig, MemoryConfig
from flashmem.data.datasets import load_examples
from flashmem.data.prompts import encode_prompts
from flashmem.decoding.engine import chunk_entropy, prefill
from flashmem.decoding.generation import generate
from flashmem.memory.registry import build_memory, save_memory
from flashmem.models.loader import load_backbone
from flashmem.training.batching import encode_examples
from flashmem.training.scoring import find_insertions
from flashmem.training.thresholds import calibrate_threshold, prompt_threshold, sequence_threshold


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cal")
    model_dir = make_tiny_model_dir(root / "model")
    data = write_jsonl(root / "data.jsonl", arithmetic_rows(6))
    bb = load_backbone(str(model_dir))
    examples, _ = load_examples(str(data))
    return model_dir, data, bb, examples


def test_calibrate_returns_a_config_at_the_percentile_of_decoding_entropies(setup):
    _, _, bb, examples = setup
    memory = build_memory(bb, MemoryConfig(min_gap=2, budget=3))
    result = calibrate_threshold(bb, memory, memory.config, examples[:4], percentile=70, max_new_tokens=12,
                                 batch_size=3, recheck=2)
    # Independently: free decoding of the same prompts, trigger off (no threshold yet), monitor on.
    off = replace(memory.config, trigger_memory=False)
    entropies = []
    for start in (0, 3):
        ids, mask = encode_prompts(bb.tokenizer, [ex.question for ex in examples[start:min(start + 3, 4)]])
        entropies += [e for tr in generate(bb, ids, mask, memory, GenerationConfig(max_new_tokens=12),
                                           policy=off).traces for e in tr.entropy]
    assert len(entropies) == 4 * 11  # the first token is chosen before any monitor step
    assert result.threshold == pytest.approx(float(np.percentile(entropies, 70)))
    assert result.config == replace(memory.config, threshold=result.threshold, percentile=70)
    assert memory.config.threshold is None and memory.config.trigger_memory  # nothing was changed in place
    assert 0.0 <= result.trigger_rate <= 1.0 and result.n_recheck == 2
    assert 0.0 <= result.consolidations_per_answer <= 3


def test_sequence_threshold_uses_untrained_answer_entropies(setup):
    _, _, bb, examples = setup
    memory = build_memory(bb, MemoryConfig())
    seqs = encode_examples(bb.tokenizer, examples, 512, "stop", "data")
    tau = sequence_threshold(bb, memory, seqs[:3], memory.config)
    off = replace(memory.config, trigger_memory=False)
    expected = [e for s in seqs[:3]
                for e in find_insertions(bb, memory, s.prompt, s.answer, with_entropy=True, policy=off).entropies]
    assert tau == pytest.approx(np.percentile(expected, 85.0))
    assert len(expected) == sum(int(s.answer.numel()) for s in seqs[:3])


def test_prompt_threshold_reads_whole_prompts_and_only_defined_positions(setup):
    _, _, bb, examples = setup
    config = MemoryConfig(n_sinks=4, percentile=50)
    ids, mask = encode_prompts(bb.tokenizer, [ex.question for ex in examples[:3]])
    tau = prompt_threshold(bb, ids, mask, config)
    # Reference, row by row without padding: every position that sees at least one non-sink key.
    values = []
    for r in range(3):
        row = ids[r, mask[r].bool()][None]
        state, out = prefill(bb, row, torch.ones_like(row), 4, want_query=True)
        values += chunk_entropy(bb, state, out.query)[0, 5:].tolist()
    assert tau == pytest.approx(float(np.percentile(values, 50)), rel=1e-5)
    assert min(values) > 0  # the undefined (zero) positions were left out


def test_calibrate_command_writes_config_and_histogram(setup, tmp_path, capsys):
    model_dir, data, bb, _ = setup
    save_memory(build_memory(bb, MemoryConfig(threshold=0.5)), tmp_path / "mem")
    hist = tmp_path / "h.png"
    code = main(["calibrate", "--model", str(model_dir), "--memory", str(tmp_path / "mem"), "--data", str(data),
                 "--val-size", "2", "--limit", "2", "--max-new-tokens", "6", "--recheck", "1", "--hist", str(hist)])
    assert code == 0
    out = capsys.readouterr().out
    assert "threshold:" in out and "was 0.5" in out and "trigger rate:" in out and "consolidations per answer" in out
    saved = json.loads((tmp_path / "mem" / "memory_config.json").read_text())
    assert saved["threshold"] != 0.5 and saved["percentile"] == 85.0
    assert hist.stat().st_size > 1000
    assert main(["calibrate", "--model", str(model_dir), "--memory", str(tmp_path / "mem"), "--data", str(data),
                 "--percentile", "100"]) == 2
