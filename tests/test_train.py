"""Training: the loss equals the inference path's NLL, only the memory learns, resume is exact,
interrupts and time limits save cleanly, bad data is reported, self-targets are cached."""
import json
import os
import signal
from dataclasses import replace

import pytest
import torch
from tiny_assets import arithmetic_rows, make_tiny_model_dir, write_jsonl

from flashmem.cli import main
from flashmem.config import GenerationConfig, MemoryConfig
from flashmem.decoding.generation import GenerationResult, RowTrace, generate
from flashmem.errors import FlashmemError
from flashmem.memory.registry import build_memory, default_config, load_memory
from flashmem.models.backbone import Backbone
from flashmem.models.loader import load_backbone
from flashmem.models.testing import tiny_model
from flashmem.training import targets, trainer
from flashmem.training.batching import DataStream, epoch_order
from flashmem.training.scoring import find_insertions, training_nll
from flashmem.training.trainer import check_frozen, lr_factor


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("assets")
    model = make_tiny_model_dir(root / "model")
    data = write_jsonl(root / "data.jsonl", arithmetic_rows(16))
    return model, data


def train(model, data, out, *extra) -> int:
    return main(["train", "--model", str(model), "--data", str(data), "--out", str(out), "--batch-size", "2",
                 "--val-size", "2", "--eval-every", "2", "--min-gap", "3", *map(str, extra)])


def losses(out) -> list[float]:
    return [r["loss"] for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "loss" in r]


# ---- consistency: the trained memory is the memory used at inference -----------------------------
@pytest.mark.parametrize("model_type,method", [("llama", "flashmem"), ("qwen3", "flashmem"), ("llama", "softprompt")])
def test_training_loss_equals_generation_nll(model_type, method):
    bb = Backbone(tiny_model(model_type, seed=1))
    torch.manual_seed(0)
    prompt, answer = torch.randint(3, 200, (12,)), torch.randint(3, 200, (30,))
    memory = build_memory(bb, MemoryConfig(method=method, num_latents=3, budget=2, min_gap=4, threshold=float("inf")))
    if method == "flashmem":  # trained-looking: the latents depend on the context, not only the anchor
        with torch.no_grad():
            memory.out_proj.weight.normal_(0.0, 0.05)
    entropies = find_insertions(bb, memory, prompt, answer, with_entropy=True).entropies
    policy = replace(memory.config, threshold=float(torch.tensor(entropies).quantile(0.5)))  # fires often enough
    scored = training_nll(bb, memory, prompt, answer, policy=policy)
    assert scored.nll.requires_grad and len(scored.insertions) == 2
    forced = generate(bb, prompt[None], torch.ones(1, 12), memory, GenerationConfig(), forced=answer[None],
                      policy=policy)
    assert forced.traces[0].consolidations == scored.insertions
    assert float(-forced.logprobs.sum()) == pytest.approx(float(scored.nll.detach()), abs=1e-4)


def test_training_moves_every_memory_weight_and_no_backbone_weight(assets, tmp_path):
    model, data = assets
    weights = model / "model.safetensors"
    before = weights.read_bytes()
    assert train(model, data, tmp_path / "run", "--steps", 3, "--threshold", 1.0, "--lr", 1e-2) == 0
    bb = load_backbone(str(model))
    trained = load_memory(tmp_path / "run", bb)
    torch.manual_seed(0)  # `flashmem train --seed 0` initialises the memory from this seed
    fresh = build_memory(bb, replace(trained.config, backbone={}))
    start, end = fresh.trainable_state(), trained.trainable_state()
    unchanged = {k for k in end if torch.equal(end[k], start[k])}
    assert not unchanged, unchanged  # the context path (seed MLP, layer copy, projection) trained too
    assert end["out_proj.weight"].abs().sum() > 0  # it started at zero
    assert weights.read_bytes() == before and bb.frozen()


def test_the_frozen_check_is_an_error_not_an_assert():
    bb = Backbone(tiny_model("llama"))
    memory = build_memory(bb, default_config("flashmem"))
    check_frozen(bb, list(memory.parameters()))
    with pytest.raises(FlashmemError, match="frozen"):
        check_frozen(bb, [next(bb.model.parameters())])
    bb.model.lm_head.weight.requires_grad_(True)
    with pytest.raises(FlashmemError, match="frozen"):
        check_frozen(bb, list(memory.parameters()))


# ---- the command ---------------------------------------------------------------------------------
def test_train_writes_memory_log_and_threshold(assets, tmp_path, capsys):
    model, data = assets
    out = tmp_path / "run"
    assert train(model, data, out, "--steps", 2, "--save-every", 1) == 0
    err = capsys.readouterr().err
    assert "threshold:" in err and "85th percentile" in err and "done: step 2/2" in err
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert set(records[0]) == {"step", "threshold", "val_loss", "val_targets"} and records[0]["threshold"] > 0
    assert records[0]["val_targets"] == "reference"
    assert [r["step"] for r in records] == [0, 1, 2]
    assert {"loss", "lr", "grad_norm", "tokens", "tokens_per_s", "elapsed"} <= set(records[1])
    assert "val_loss" in records[2] and records[1]["lr"] > 0
    config = json.loads((out / "memory_config.json").read_text())
    assert config["threshold"] > 0 and config["min_gap"] == 3
    settings = json.loads((out / "train_config.json").read_text())  # the run's settings, beside the weights
    assert settings["steps"] == 2 and settings["method"] == "flashmem" and settings["lr"] == 3e-4
    assert (out / "checkpoint" / "manifest.json").is_file()
    assert train(model, data, out, "--steps", 2) == 2  # a checkpoint is there: refuse to overwrite it
    assert "pass --resume" in capsys.readouterr().err
    optimizer = out / "checkpoint" / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[:100])
    assert train(model, data, out, "--steps", 2, "--save-every", 1, "--resume") == 2
    assert f"{optimizer} is 100 bytes" in capsys.readouterr().err


def test_resume_gives_identical_losses(assets, tmp_path, monkeypatch):
    model, data = assets
    common = ("--steps", 6, "--save-every", 2, "--threshold", 1.0, "--lr", 1e-2)
    straight = tmp_path / "straight"
    assert train(model, data, straight, *common) == 0
    crashed = tmp_path / "crashed"
    real_log = trainer.Trainer.log

    def crash_after_step_3(self, record):
        real_log(self, record)
        if record.get("step") == 3 and "loss" in record:
            raise RuntimeError("power cut")

    monkeypatch.setattr(trainer.Trainer, "log", crash_after_step_3)
    with pytest.raises(RuntimeError):
        train(model, data, crashed, *common)
    monkeypatch.setattr(trainer.Trainer, "log", real_log)
    assert len(losses(crashed)) == 3  # step 3 was logged, the checkpoint is from step 2
    assert train(model, data, crashed, *common, "--resume") == 0
    assert losses(crashed) == pytest.approx(losses(straight), abs=1e-6)
    assert len(losses(crashed)) == 6
    assert train(model, data, crashed, *common, "--lr", 1e-3, "--resume") == 2  # other arguments: refused


def test_sigterm_saves_and_exits_130(assets, tmp_path, monkeypatch):
    model, data = assets
    real_log = trainer.Trainer.log

    def terminate_at_step_1(self, record):
        real_log(self, record)
        if record.get("step") == 1 and "loss" in record:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(trainer.Trainer, "log", terminate_at_step_1)
    out = tmp_path / "run"
    assert train(model, data, out, "--steps", 20, "--threshold", 1.0) == 130
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["step"] == 2  # the step in flight when the signal came is finished, then saved
    assert (out / "memory.safetensors").is_file()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored


def test_minutes_limit_stops_cleanly(assets, tmp_path, capsys):
    model, data = assets
    out = tmp_path / "run"
    assert train(model, data, out, "--steps", 50, "--minutes", 1e-6, "--threshold", 1.0) == 0
    assert "stopped at --minutes: step 1/50" in capsys.readouterr().err
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 1


def test_stop_at_keeps_the_schedule_and_resumes(assets, tmp_path, capsys):
    """--stop-at N ends at step N on --steps' schedule; resuming to the end equals one uninterrupted run."""
    model, data = assets
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert train(model, data, whole, "--steps", 6, "--threshold", 1.0) == 0
    assert train(model, data, parts, "--steps", 6, "--threshold", 1.0, "--stop-at", 3) == 0
    assert "stopped at --stop-at: step 3/6" in capsys.readouterr().err
    assert json.loads((parts / "checkpoint" / "state.json").read_text())["step"] == 3
    assert train(model, data, parts, "--steps", 6, "--threshold", 1.0, "--stop-at", 3, "--resume") == 0
    assert "stopped at --stop-at: step 3/6" in capsys.readouterr().err  # already there: no step is taken
    assert len(losses(parts)) == 3
    assert train(model, data, parts, "--steps", 6, "--threshold", 1.0, "--resume") == 0
    lrs = [[r["lr"] for r in map(json.loads, (d / "log.jsonl").read_text().splitlines()) if "lr" in r]
           for d in (whole, parts)]
    assert lrs[0] == lrs[1] and losses(parts) == pytest.approx(losses(whole), abs=1e-6)


# ---- data ----------------------------------------------------------------------------------------
def test_long_sequences_stop_or_are_skipped_with_line(assets, tmp_path, capsys):
    model, _ = assets
    rows = arithmetic_rows(8)
    rows[4] = {"question": "What is " + "1 + " * 60 + "1?", "answer": "#### 61"}
    data = write_jsonl(tmp_path / "long.jsonl", rows)
    assert train(model, data, tmp_path / "a", "--steps", 1, "--max-length", 120, "--val-size", 0) == 2
    assert f"{data} line 5: sequence of" in capsys.readouterr().err
    assert train(model, data, tmp_path / "b", "--steps", 1, "--max-length", 120, "--val-size", 0,
                 "--on-bad-data", "skip", "--threshold", 1.0) == 0
    assert "skipped 1 of 8 examples over --max-length" in capsys.readouterr().err


def test_malformed_line_is_reported(assets, tmp_path, capsys):
    model, _ = assets
    data = write_jsonl(tmp_path / "bad.jsonl", arithmetic_rows(5) + ["{not json"])
    assert train(model, data, tmp_path / "a", "--steps", 1) == 2
    assert "line 6" in capsys.readouterr().err


def test_data_order_and_schedule():
    stream = DataStream(5, seed=3)
    first = stream.take(7)
    assert first[:5] == epoch_order(5, 3, 0) and sorted(first[:5]) == list(range(5))
    assert first[5:] == epoch_order(5, 3, 1)[:2]
    again = DataStream(5, seed=3)
    again.restore(stream.state())
    assert again.take(3) == stream.take(3)
    assert lr_factor(0, 100, 10) == pytest.approx(0.1) and lr_factor(9, 100, 10) == 1.0
    assert lr_factor(55, 100, 10) == pytest.approx(0.5) and lr_factor(100, 100, 10) == 0.0


# ---- self targets --------------------------------------------------------------------------------
def _fake_generate(tokenizer, calls):
    """Sample i of each question answers '#### 5' (right for 2 + 3 only) or '#### 0', ending with EOS."""

    def fake(bb, ids, mask, memory, gen, monitor=True):
        calls.append(ids.shape[0])
        texts = ["2 + 3 = 5\n#### 5" if i % 2 == 0 else "#### 0" for i in range(ids.shape[0])]
        texts[-1] = "#### 5 and more"  # cut off: no EOS, never kept
        tokens = [tokenizer(t).input_ids + [tokenizer.eos_token_id] for t in texts]
        tokens[-1] = tokens[-1][:-1]
        return GenerationResult(tokens=tokens, traces=[RowTrace(None) for _ in texts])

    return fake


def test_self_targets_keep_correct_and_resume(assets, tmp_path, monkeypatch, capsys):
    model, _ = assets
    bb = load_backbone(str(model))
    tok = bb.tokenizer
    rows = [{"question": "What is 2 + 3?", "answer": "#### 5"}, {"question": "What is 1 + 1?", "answer": "#### 2"},
            {"question": "What is 4 + 1?", "answer": "#### 5"}]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    calls = []
    monkeypatch.setattr(targets, "generate", _fake_generate(tok, calls))
    out = tmp_path / "run"
    assert train(model, data, out, "--steps", 1, "--val-size", 0, "--targets", "self", "--self-samples", 2,
                 "--self-batch-size", 4, "--threshold", 1.0) == 0
    err = capsys.readouterr().err
    assert "kept 2 of 6 samples (2 of 3 questions solved" in err
    assert "self targets: 100%" in err and "3/3" in err  # progress reaches a log file, not only a terminal
    cache = [json.loads(line) for line in (out / "self_targets.jsonl").read_text().splitlines()]
    assert [len(r["kept"]) for r in cache] == [1, 0, 1]
    assert calls == [4, 2]  # --self-batch-size 4: two questions of two samples per generate call
    calls.clear()
    from flashmem.data.datasets import load_examples
    examples, _ = load_examples(str(data))
    kept = targets.build_self_targets(bb, examples, out, targets.SelfTargetSettings(samples=2))
    assert not calls  # everything came from the cache
    assert [e.answer for e in kept] == ["2 + 3 = 5\n#### 5"] * 2


def test_self_reuse_samples_only_what_an_earlier_collection_did_not_solve(assets, tmp_path, monkeypatch):
    """--self-reuse: solved questions keep the earlier solutions (marked), only unsolved ones are sampled."""
    model, _ = assets
    bb = load_backbone(str(model))
    rows = [{"question": "What is 2 + 3?", "answer": "#### 5"}, {"question": "What is 1 + 4?", "answer": "#### 5"},
            {"question": "What is 0 + 5?", "answer": "#### 5"}]
    from flashmem.data.datasets import load_examples
    examples, _ = load_examples(str(write_jsonl(tmp_path / "d.jsonl", rows)))
    greedy = tmp_path / "greedy.jsonl"
    key = targets.question_key
    greedy.write_text(json.dumps({"key": key(examples[0]), "tried": 1, "kept": ["greedy\n#### 5"]}) + "\n"
                      + json.dumps({"key": key(examples[1]), "tried": 1, "kept": []}) + "\n")
    calls = []
    monkeypatch.setattr(targets, "generate", _fake_generate(bb.tokenizer, calls))
    out = tmp_path / "sampled.jsonl"
    kept = targets.build_self_targets(bb, examples, out, targets.SelfTargetSettings(samples=2, reuse=str(greedy)))
    assert calls == [4]  # questions 2 and 3 only, two samples each
    cache = [json.loads(line) for line in out.read_text().splitlines()]
    assert cache[0]["reused"] == str(greedy) and cache[0]["kept"] == ["greedy\n#### 5"]
    assert "reused" not in cache[1] and "reused" not in cache[2]
    assert [e.answer for e in kept] == ["greedy\n#### 5"] + ["2 + 3 = 5\n#### 5"] * 2
    with pytest.raises(FlashmemError, match="not found"):
        targets.build_self_targets(bb, examples, tmp_path / "x.jsonl",
                                   targets.SelfTargetSettings(reuse=str(tmp_path / "missing.jsonl")))
    with pytest.raises(FlashmemError, match="own targets file"):
        targets.build_self_targets(bb, examples, greedy, targets.SelfTargetSettings(reuse=str(greedy)))


def test_a_stopped_collection_resumes_with_the_same_calls_and_seeds(assets, tmp_path, monkeypatch):
    """Calls (questions, seed) depend only on what is left, so a collection stopped between calls and resumed
    samples exactly what an uninterrupted one does (results/qwen/collect_shards.py splits on this)."""
    model, _ = assets
    bb = load_backbone(str(model))
    from flashmem.data.datasets import load_examples
    rows = [{"question": f"What is {i} + 5?", "answer": f"#### {i + 5}"} for i in range(5)]
    examples, _ = load_examples(str(write_jsonl(tmp_path / "d.jsonl", rows)))
    fake, seeds = _fake_generate(bb.tokenizer, []), []

    def seeded(bb, ids, mask, memory, gen, **kw):
        seeds.append(gen.seed)
        return fake(bb, ids, mask, memory, gen, **kw)

    monkeypatch.setattr(targets, "generate", seeded)
    settings = targets.SelfTargetSettings(samples=2, batch_size=4, seed=3)
    targets.build_self_targets(bb, examples, tmp_path / "whole.jsonl", settings)
    whole = list(seeds)
    seeds.clear()
    targets.build_self_targets(bb, examples[:2], tmp_path / "resumed.jsonl", settings)  # stopped after one call
    targets.build_self_targets(bb, examples, tmp_path / "resumed.jsonl", settings)
    assert len(whole) == 3 and len(set(whole)) == 3  # two questions a call; each call its own seed
    assert seeds == whole


def test_held_out_loss_is_also_taken_at_the_last_step(assets, tmp_path):
    model, data = assets
    out = tmp_path / "run"
    assert train(model, data, out, "--steps", 3, "--eval-every", 2) == 0
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "val_loss" in r] == [0, 2, 3]


def test_resume_treats_fields_added_later_as_their_defaults(tmp_path):
    """A checkpoint written before a config field existed resumes when this run keeps the field's
    default, and is refused when it changes it."""
    from dataclasses import asdict, replace

    from flashmem.training.train import TrainConfig, resume_differences

    cfg = TrainConfig(data="gsm8k", out=str(tmp_path / "m"))
    saved = asdict(cfg)
    del saved["self_temperature"], saved["memory"]["entropy"]  # as an older checkpoint has them
    assert resume_differences(saved, cfg) == []
    changed = replace(cfg, self_temperature=0.0, lr=1e-3)
    diffs = resume_differences(saved, changed)
    assert any(d.startswith("self_temperature:") for d in diffs) and any(d.startswith("lr:") for d in diffs)
    normalized = replace(cfg, memory=replace(cfg.memory, entropy="normalized"))
    assert resume_differences(saved, normalized) == ["memory.entropy: 'raw' -> 'normalized'"]


def test_the_soft_prompt_gets_its_own_default_learning_rate(tmp_path):
    """The soft prompt's few values need much larger steps than a consolidator; an explicit --lr wins."""
    from flashmem.training.train import MEMORY_LR, SOFTPROMPT_LR, TrainConfig

    lr = {m: TrainConfig(data="gsm8k", out=str(tmp_path), method=m).lr for m in ("flashmem", "memgen", "softprompt")}
    assert lr == {"flashmem": MEMORY_LR, "memgen": MEMORY_LR, "softprompt": SOFTPROMPT_LR} and SOFTPROMPT_LR > MEMORY_LR
    assert TrainConfig(data="gsm8k", out=str(tmp_path), method="softprompt", lr=1e-3).lr == 1e-3
    assert "(default 0.0003; 0.1 for the soft prompt)" in " ".join(main_help("train").split())


def main_help(command: str) -> str:
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), pytest.raises(SystemExit):
        main([command, "-h"])
    return buf.getvalue()


def test_self_targets_hold_out_the_same_kind_of_answer(assets, tmp_path, monkeypatch, capsys):
    """With --targets self the held-out loss scores the held-out questions' own correct solutions, not
    their references (which would reward the learning rate that moves the model least)."""
    model, _ = assets
    rows = [{"question": f"What is {a} + {5 - a}?", "answer": "#### 5"} for a in range(4)]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    monkeypatch.setattr(targets, "generate", _fake_generate(load_backbone(str(model)).tokenizer, []))
    out = tmp_path / "run"
    assert train(model, data, out, "--steps", 1, "--val-size", 2, "--eval-every", 1, "--targets", "self",
                 "--self-samples", 2, "--threshold", 1.0) == 0
    assert capsys.readouterr().err.count("kept 2 of 4 samples (2 of 2 questions solved") == 2  # train, then held out
    assert len((out / "self_targets.jsonl").read_text().splitlines()) == 4
    vals = [r for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "val_loss" in r]
    assert [r["step"] for r in vals] == [0, 1] and all(r["val_targets"] == "self" for r in vals)
