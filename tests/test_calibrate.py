"""Calibration: tau is the percentile of decoding-step entropies, written into the memory's config;
the pre-training threshold comes from the untrained system's answer entropies."""
import json

import numpy as np
import pytest
from tiny_assets import arithmetic_rows, make_tiny_model_dir, write_jsonl

from flashmem.backbone import Backbone
from flashmem.batching import encode_examples
from flashmem.calibrate import calibrate_threshold, threshold_from_sequences
from flashmem.cli import main
from flashmem.config import MemoryConfig
from flashmem.data import load_examples
from flashmem.memory import build_memory
from flashmem.models import load_backbone
from flashmem.sequence import find_insertions


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cal")
    model_dir = make_tiny_model_dir(root / "model")
    data = write_jsonl(root / "data.jsonl", arithmetic_rows(6))
    model, tok = load_backbone(str(model_dir))
    bb = Backbone(model, tok, name=str(model_dir))
    examples, _ = load_examples(str(data))
    return model_dir, data, bb, examples


def test_calibrate_sets_percentile_of_decoding_entropies(setup):
    _, _, bb, examples = setup
    memory = build_memory(bb, MemoryConfig(min_gap=2, budget=3))
    result = calibrate_threshold(bb, memory, examples[:4], percentile=70, max_new_tokens=12, batch_size=3, recheck=2)
    assert result.entropies.size == 4 * 11  # the first token is chosen before any monitor step
    assert result.threshold == pytest.approx(np.percentile(result.entropies, 70))
    assert memory.config.threshold == result.threshold and memory.config.percentile == 70
    assert memory.config.trigger_memory  # restored after collecting with the trigger off
    assert 0.0 <= result.trigger_rate <= 1.0 and result.n_recheck == 2
    assert 0.0 <= result.consolidations_per_answer <= 3


def test_threshold_from_sequences_uses_untrained_answer_entropies(setup):
    _, _, bb, examples = setup
    memory = build_memory(bb, MemoryConfig())
    seqs = encode_examples(bb.tokenizer, examples, 512, "stop", "data")
    tau = threshold_from_sequences(bb, memory, seqs[:3], 85.0)
    memory.config.trigger_memory = False
    expected = [e for s in seqs[:3] for e in find_insertions(bb, memory, s.prompt, s.answer, with_entropy=True).entropies]
    assert tau == pytest.approx(np.percentile(expected, 85.0))
    assert len(expected) == sum(int(s.answer.numel()) for s in seqs[:3])


def test_calibrate_command_writes_config_and_histogram(setup, tmp_path, capsys):
    model_dir, data, bb, _ = setup
    build_memory(bb, MemoryConfig(threshold=0.5)).save(tmp_path / "mem")
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
