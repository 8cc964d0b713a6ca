"""Tests for `flashmem eval`: resumable records, summary and markdown, paired comparisons."""


import json
from dataclasses import replace

import pytest
from tiny_assets import arithmetic_rows, make_tiny_model_dir, write_jsonl

from flashmem.api import FlashMem
from flashmem.cli import main
from flashmem.errors import FlashmemError
from flashmem.evaluation.records import RecordFile, read_records
from flashmem.evaluation.report import compare_runs, comparison_markdown
from flashmem.memory.registry import save_memory

# Fields that must not depend on whether a run was resumed (timings obviously do).
STABLE = ("n", "accuracy", "nll_per_token", "nll_per_question", "consolidations_per_answer",
          "prompt_memory_rate", "trigger_rate", "generated_tokens", "at_token_limit")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_assets")
    return {"model": str(make_tiny_model_dir(root / "model")), "data": str(write_jsonl(root / "q.jsonl", arithmetic_rows(6)))}


def eval_cli(assets, out, *extra, method="flashmem", limit=4, max_new=6):
    argv = ["eval", "--model", assets["model"], "--method", method, "--data", assets["data"],
            "--limit", str(limit), "--batch-size", "2", "--max-new-tokens", str(max_new), "--out", str(out)]
    if method != "vanilla":
        argv.append("--untrained")
    return main(argv + list(extra))


def records_of(out):
    return read_records(out.with_suffix(".records.jsonl"))[1]


def test_resume_after_kill_gives_the_straight_run(assets, tmp_path, capsys):
    straight, resumed = tmp_path / "straight.json", tmp_path / "resumed.json"
    assert eval_cli(assets, straight) == 0
    assert eval_cli(assets, resumed, limit=2) == 0  # a run "killed" after two questions ...
    with open(resumed.with_suffix(".records.jsonl"), "a") as handle:
        handle.write('{"id": 3, "correct": tr')  # ... in the middle of writing a third
    assert eval_cli(assets, resumed) == 0
    assert "resuming: 2 of 4" in capsys.readouterr().err
    a, b = json.loads(straight.read_text()), json.loads(resumed.read_text())
    assert {k: a[k] for k in STABLE} == {k: b[k] for k in STABLE}
    assert [r["id"] for r in records_of(resumed)] == [1, 2, 3, 4]  # torn line dropped, nothing twice
    drop = ("gen_seconds", "nll_seconds")
    strip = lambda rs: [{k: v for k, v in r.items() if k not in drop} for r in rs]  # noqa: E731
    assert strip(records_of(straight)) == strip(records_of(resumed))
    # A finished run reruns as a no-op with the same summary.
    assert eval_cli(assets, resumed) == 0
    assert {k: json.loads(resumed.read_text())[k] for k in STABLE} == {k: a[k] for k in STABLE}


def test_mismatched_settings_are_refused(assets, tmp_path, capsys):
    out = tmp_path / "run.json"
    assert eval_cli(assets, out, limit=2) == 0
    capsys.readouterr()
    assert eval_cli(assets, out, limit=2, max_new=7) == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "max_new_tokens: 6 vs now 7" in err
    assert eval_cli(assets, out, limit=2, method="vanilla") == 2


@pytest.mark.parametrize("argv, message", [
    (["--method", "vanilla", "--memory", "x"], "takes no --memory"),
    (["--method", "flashmem"], "needs --memory"),
    (["--method", "softprompt", "--memory", "nowhere"], "memory folder not found"),
])
def test_argument_errors(assets, tmp_path, capsys, argv, message):
    base = ["eval", "--model", assets["model"], "--data", assets["data"], "--out", str(tmp_path / "x.json")]
    assert main(base + argv) == 2
    assert message in capsys.readouterr().err


def test_summary_markdown_and_compare(assets, tmp_path, capsys):
    vanilla, softprompt = tmp_path / "vanilla.json", tmp_path / "soft.json"
    assert eval_cli(assets, vanilla, method="vanilla") == 0
    assert eval_cli(assets, softprompt, "--compare", str(vanilla), method="softprompt") == 0
    printed = capsys.readouterr().out
    summary = json.loads(softprompt.read_text())
    acc = summary["accuracy"]
    assert summary["n"] == 4 and acc["n"] == 4 and acc["lo"] <= acc["value"] <= acc["hi"]
    assert summary["nll_per_token"] > 0 and summary["nll_per_question"]["n"] == 4
    assert 0.0 <= summary["trigger_rate"] <= 1.0  # softprompt fires on the monitor
    assert summary["generated_tokens"]["total"] == sum(r["gen_tokens"] for r in records_of(softprompt))
    assert summary["tokens_per_s"] > 0 and summary["seconds_per_question"] > 0
    capped = [r["gen_tokens"] >= summary["settings"]["max_new_tokens"] for r in records_of(softprompt)]
    assert summary["at_token_limit"] == sum(capped) / 4
    settings = summary["settings"]
    assert settings["method"] == "softprompt" and settings["memory"] == "untrained"
    assert {"platform", "cpu_count", "torch_threads"} <= set(settings["machine"])
    assert any("UNTRAINED" in note for note in settings["notes"])
    assert json.loads(vanilla.read_text())["trigger_rate"] is None  # plain decoding: no trigger
    md = softprompt.with_suffix(".md").read_text()
    assert "| softprompt | untrained |" in md and "softprompt (untrained) - vanilla" in md
    assert "accuracy [95% CI]" in printed
    pair = summary["comparison"]["pairs"][0]
    assert pair["a"] == "vanilla" and pair["n"] == 4 and pair["accuracy_diff"]["lo"] <= pair["accuracy_diff"]["hi"]


def synthetic_run(path, method, correct, nll, sha="q"):
    settings = {"method": method, "data": "gsm8k", "split": "test", "memory": None}
    rf = RecordFile(path, {"method": method}, settings)
    rf.append([{"id": i, "question_sha": f"{sha}{i}", "correct": c, "nll": n * 10, "nll_tokens": 10}
               for i, (c, n) in enumerate(zip(correct, nll))])
    return path


def test_compare_runs_on_synthetic_records(tmp_path):
    a = synthetic_run(tmp_path / "a.records.jsonl", "vanilla", [1, 0, 0, 1, 0, 0], [1.5, 1.4, 1.6, 1.5, 1.3, 1.7])
    b = synthetic_run(tmp_path / "b.records.jsonl", "flashmem", [1, 1, 0, 1, 1], [1.2, 1.1, 1.4, 1.3, 1.0])
    result = compare_runs([a, b], n_boot=2000)
    assert result["n_shared"] == 5  # question 5 only in a
    pair = result["pairs"][0]
    assert (pair["a"], pair["b"]) == ("vanilla", "flashmem")
    assert pair["accuracy_diff"]["mean_diff"] == pytest.approx(2 / 5)
    assert pair["nll_diff"]["mean_diff"] == pytest.approx(-0.26)
    assert pair["nll_diff"]["lo"] <= -0.26 <= pair["nll_diff"]["hi"] < 0
    runs = {r["label"]: r for r in result["runs"]}
    assert runs["vanilla"]["accuracy"] == pytest.approx(2 / 5) and runs["flashmem"]["accuracy"] == pytest.approx(4 / 5)
    assert "flashmem - vanilla" in comparison_markdown(result)
    c = synthetic_run(tmp_path / "c.records.jsonl", "softprompt", [1] * 5, [1.0] * 5, sha="other")
    with pytest.raises(FlashmemError, match="different data"):
        compare_runs([a, c])


def test_compare_command_labels_variants_and_writes_json(tmp_path, capsys):
    a = synthetic_run(tmp_path / "a.records.jsonl", "vanilla", [1, 0, 0, 1], [1.5, 1.4, 1.6, 1.5])
    b = synthetic_run(tmp_path / "b.records.jsonl", "flashmem", [1, 1, 0, 1], [1.2, 1.1, 1.4, 1.3])
    header = json.loads(b.read_text().splitlines()[0])  # mark b as an ablation, as evaluate records it
    header["settings"]["config"] = {"ablate": "foreign-context"}
    b.write_text("\n".join([json.dumps(header), *b.read_text().splitlines()[1:]]) + "\n")
    out = tmp_path / "cmp.json"
    assert main(["compare", str(a), str(b), "--n-boot", "500", "--out", str(out)]) == 0
    assert "flashmem, ablate foreign-context - vanilla" in capsys.readouterr().out
    pair = json.loads(out.read_text())["pairs"][0]
    assert pair["n"] == 4 and pair["accuracy_diff"]["mean_diff"] == pytest.approx(0.25)
    assert main(["compare", str(a)]) == 2  # one run is not a comparison


def test_records_refuse_garbage_in_the_middle(tmp_path):
    path = tmp_path / "r.records.jsonl"
    RecordFile(path, {"x": 1}).append([{"id": 1}, {"id": 2}])
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "not json", lines[2]]) + "\n")
    with pytest.raises(FlashmemError, match="line 2"):
        RecordFile(path, {"x": 1})


def test_memgen_inserts_at_delimiters(assets, tmp_path):
    out = tmp_path / "memgen.json"
    assert eval_cli(assets, out, method="memgen", limit=2) == 0
    summary = json.loads(out.read_text())
    assert summary["settings"]["memory_config"]["trigger"] == "delimiter"
    assert summary["trigger_rate"] is not None  # share of generated tokens that are delimiters
    # The reference answers ("2 + 3 = 5.\n#### 5") hold delimiters: the NLL path inserts memory there.
    assert all(r["nll_insertions"] for r in records_of(out))


def test_prompt_memory_only_ablation(assets, tmp_path):
    """--prompt-memory-only keeps the prompt-end memory and makes none during decoding."""
    fm = FlashMem.load(assets["model"])
    save_memory(fm.memory, tmp_path / "mem", replace(fm.config, threshold=0.0, min_gap=1))  # fires when allowed
    base = ["eval", "--model", assets["model"], "--method", "flashmem", "--memory", str(tmp_path / "mem"),
            "--data", assets["data"], "--limit", "2", "--batch-size", "2", "--max-new-tokens", "8"]
    assert main(base + ["--out", str(tmp_path / "full.json")]) == 0
    assert main(base + ["--prompt-memory-only", "--out", str(tmp_path / "prompt.json")]) == 0
    full, prompt_only = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("full", "prompt"))
    assert full["consolidations_per_answer"] > 0 and prompt_only["consolidations_per_answer"] == 0
    assert full["prompt_memory_rate"] == prompt_only["prompt_memory_rate"] == 1.0


def test_nll_only_gives_the_full_runs_nll_without_accuracy(assets, tmp_path, capsys):
    full, fast = tmp_path / "full.json", tmp_path / "fast.json"
    assert eval_cli(assets, full) == 0
    assert eval_cli(assets, fast, "--nll-only", "--compare", str(full)) == 0
    a, b = json.loads(full.read_text()), json.loads(fast.read_text())
    assert b["nll_only"] and not a["nll_only"]
    assert b["accuracy"]["value"] is None and a["accuracy"]["value"] is not None
    assert b["nll_per_token"] == pytest.approx(a["nll_per_token"], abs=1e-6)
    assert [r["nll_insertions"] for r in records_of(fast)] == [r["nll_insertions"] for r in records_of(full)]
    assert all(r["prediction"] is None and r["gen_tokens"] == 0 for r in records_of(fast))
    pair = b["comparison"]["pairs"][0]
    assert pair["accuracy_diff"] is None and pair["nll_diff"]["mean_diff"] == pytest.approx(0.0, abs=1e-6)
    capsys.readouterr()
    # The two modes record different things, so one cannot resume the other's records.
    assert eval_cli(assets, full, "--nll-only") == 2
    assert "nll_only: null vs now true" in capsys.readouterr().err
