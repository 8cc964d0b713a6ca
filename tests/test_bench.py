"""Tests for `flashmem bench`: the JSON on a tiny model (every schedule, two batch sizes, memory from the
workers), the schedules' firing steps, and the ratios."""
import json

import pytest
import torch

from flashmem.cli import main
from flashmem.errors import FlashmemError
from flashmem.evaluation.bench import BenchConfig, decode_once, ratios, schedule_policy
from flashmem.memory.registry import build_memory, default_config
from flashmem.models.backbone import Backbone
from flashmem.models.testing import make_tiny_model_dir, tiny_model, tiny_tokenizer

METHODS = ("vanilla", "flashmem", "memgen")


def test_bench_json_every_schedule_and_batch(tmp_path, capsys):
    model = make_tiny_model_dir(tmp_path / "model")
    out, plot = tmp_path / "bench.json", tmp_path / "bench.png"
    argv = ["bench", "--model", str(model), "--contexts", "32,16", "--new-tokens", "40", "--repeats", "2",
            "--batch-sizes", "1,2", "--schedules", "paper,fixed,calibrated", "--consolidations", "1",
            "--data-dir", str(tmp_path / "no-data"), "--out", str(out), "--plot", str(plot)]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    settings = report["settings"]
    assert settings["config"]["contexts"] == "32,16" and "vocabulary" in settings["prompt_source"]
    results = report["results"]
    assert len(results) == 3 * 2 * 2 * 3  # schedules x batches x contexts x methods: none skipped
    for r in results:
        lat = r["step_latency_ms"]
        assert r["tokens_per_s"] > 0 and 0 < lat["min"] <= lat["median"] <= lat["max"] and len(r["decode_s_runs"]) == 2
        if r["method"] == "vanilla":
            assert r["consolidations"] == 0 and not r["prompt_memory"]
        elif r["schedule"] in ("paper", "fixed"):  # the same steps for both memories: after step 31 / 19
            assert r["consolidations"] == 1 and r["prompt_memory"]
        if r["schedule"] == "paper" and r["batch"] == 1:  # the first schedule's batch-1 rows: worker memory
            assert r["peak_mb"] > 0 and r["peak_above_baseline_mb"] is not None
    calibrated = [r for r in results if r["schedule"] == "calibrated" and r["method"] == "flashmem"]
    assert all(r["trigger_rate"] is not None and 0 <= r["trigger_rate"] <= 1 for r in calibrated)
    pairs = {(r["pair"], r["schedule"], r["batch"], r["context"]) for r in report["ratios"]}
    assert len(pairs) == 2 * 3 * 2 * 2
    assert plot.stat().st_size > 0
    text = capsys.readouterr().out
    assert "flashmem/vanilla" in text and "paper" in text and "calibrated" in text


def test_paper_schedule_makes_eight_consolidations_in_256_tokens():
    bb = Backbone(tiny_model("llama"), tiny_tokenizer())
    stream = list(range(3, 250)) * 3
    counts = {}
    for method in ("flashmem", "memgen"):
        torch.manual_seed(0)
        memory = build_memory(bb, default_config(method, num_latents=2))
        policy = schedule_policy(memory.config, "paper", 256, 2)
        run = decode_once(bb, memory, policy, stream, 40, 256)
        counts[method] = (run["prompt_memory"], run["consolidations"])
    # The prompt-end memory, then one after every 32 tokens that has text after it: 8 in all.
    assert counts == {"flashmem": (True, 7), "memgen": (True, 7)}


def test_schedule_policy():
    fm, mg = default_config("flashmem"), default_config("memgen")
    paper = schedule_policy(fm, "paper", 256, 2)
    assert (paper.trigger, paper.budget, paper.min_gap, paper.prompt_memory) == ("monitor", 7, 32, True)
    assert paper.threshold < 0  # below any entropy: the monitor runs, the schedule decides
    assert schedule_policy(mg, "paper", 256, 2).trigger == "always"
    fixed = schedule_policy(mg, "fixed", 96, 2)
    assert (fixed.budget, fixed.min_gap) == (2, 32)
    assert schedule_policy(mg, "calibrated", 96, 2) == mg  # MemGen's own delimiter rule
    assert schedule_policy(fm, "fixed", 96, 0).trigger_memory is False


def test_ratios_and_bad_lists():
    rows = [{"schedule": "paper", "batch": 1, "context": 8, "method": m, "tokens_per_s": tps,
             "step_latency_ms": {"median": 1000 / tps}, "peak_mb": mb, "peak_above_baseline_mb": mb - 100}
            for m, tps, mb in (("vanilla", 20.0, 300.0), ("flashmem", 19.0, 310.0), ("memgen", 5.0, 400.0))]
    table = {r["pair"]: r for r in ratios(rows)}
    assert table["flashmem/vanilla"]["tokens_per_s"] == pytest.approx(0.95)
    assert table["flashmem/vanilla"]["peak"] == pytest.approx(310 / 300)
    assert table["flashmem/vanilla"]["peak_above_baseline"] == pytest.approx(210 / 200)
    assert table["flashmem/memgen"]["step_latency"] == pytest.approx(5 / 19)
    for bad in (dict(contexts="1k,2k"), dict(batch_sizes="0"), dict(schedules="paper,fast"), dict(methods="flashmem")):
        with pytest.raises(FlashmemError):
            BenchConfig(out="x.json", **bad)
