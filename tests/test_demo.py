"""The demo pipeline end to end on a tiny model and a tiny data set, and its resume."""
import json

import pytest
from tiny_assets import arithmetic_rows, make_tiny_model_dir, write_jsonl

from flashmem.cli import main


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("FLASHMEM_CACHE", str(tmp_path / "cache"))


def demo_argv(tmp_path, *extra):
    model = make_tiny_model_dir(tmp_path / "model", max_position_embeddings=2048)  # byte tokens: long documents
    return ["demo", "--model", str(model), "--out", str(tmp_path / "report"), "--steps", "2", "--batch-size", "2",
            "--eval-limit", "4", "--max-new-tokens", "6", "--contexts", "16,32", "--calibrate-limit", "4",
            "--data-dir", str(tmp_path), *extra]


RECALL = "recall:context=128,facts=2"
RUNS = ("vanilla", "flashmem", "flashmem_foreign", "softprompt", "vanilla_cut", "flashmem_cut", "flashmem_cut_foreign")


def test_demo_on_recall_leads_with_the_finding_trains_equal_steps_and_resumes(tmp_path, monkeypatch):
    argv = demo_argv(tmp_path, "--data", RECALL, "--prompt-window", "40")
    out = tmp_path / "report"
    assert main(argv) == 0
    for name in ("report.md", "bench.json", "trace.json", "comparisons.json", "demo_state.json",
                 "entropy_trace.png", "entropy_histogram.png", "latency_vs_context.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    for name in ("bench.json", "trace.json", "comparisons.json", "demo_state.json"):
        json.loads((out / name).read_text())
    for run in RUNS:
        summary = json.loads((out / "eval" / f"heldout_{run}.json").read_text())
        assert summary["n"] == 4, run
    cut = json.loads((out / "eval" / "heldout_flashmem_cut_foreign.json").read_text())["settings"]
    assert cut["ablate"] == "foreign-context" and cut["memory_config"]["query_agnostic"]
    assert json.loads((out / "eval" / "heldout_vanilla_cut.json").read_text())["settings"]["prompt_window"] == 40
    # Every memory trained for the same steps; the soft prompt at its own rate, the cut at its recipe's.
    states = {m: json.loads((out / "memories" / m / "checkpoint" / "state.json").read_text())
              for m in ("flashmem", "softprompt", "flashmem_cut")}
    assert {m: s["step"] for m, s in states.items()} == {m: 2 for m in states}
    assert {m: s["train_config"]["lr"] for m, s in states.items()} == {"flashmem": 3e-4, "softprompt": 1e-1,
                                                                        "flashmem_cut": 1e-3}
    assert states["flashmem_cut"]["train_config"]["stream"] and not (out / "memories" / "memgen").exists()
    lines = (out / "report.md").read_text().splitlines()
    assert lines[0].startswith(f"# flashmem demo report: `{argv[2]}` on {RECALL} (")  # the data it really used
    assert lines[2].startswith("**Does the memory carry the document?**") and "points" in lines[2]
    assert lines[4].startswith("**With the whole context in view**") and lines[6].startswith("**Cost:**")
    assert set(json.loads((out / "comparisons.json").read_text())) == {"heldout", "heldout_cut"}

    # Resume: drop the last stages as if the run had been killed there; only they run again.
    state = json.loads((out / "demo_state.json").read_text())
    state["done"] = [s for s in state["done"] if s not in ("bench", "eval-heldout-flashmem_cut_foreign")]
    (out / "demo_state.json").write_text(json.dumps(state))
    (out / "bench.json").unlink()
    from flashmem.cli import demo as demo_module
    ran = []

    def spy(name, real):
        return lambda cfg: ran.append(name) or real(cfg)
    for name in ("train", "calibrate", "evaluate", "bench", "run_generate"):
        monkeypatch.setattr(demo_module, name, spy(name, getattr(demo_module, name)))
    assert main(argv) == 0
    assert ran == ["evaluate", "bench"]
    assert (out / "bench.json").is_file()


def test_demo_on_a_question_set_with_memgen_has_no_cut(tmp_path):
    data = write_jsonl(tmp_path / "qa.jsonl", arithmetic_rows(48))
    out = tmp_path / "report"
    assert main(demo_argv(tmp_path, "--data", str(data), "--memgen")) == 0
    assert sorted(p.name for p in (out / "memories").iterdir()) == ["flashmem", "memgen", "softprompt"]
    assert not list((out / "eval").glob("*cut*"))
    lines = (out / "report.md").read_text().splitlines()
    assert lines[2].startswith("**With the whole context in view**") and "memgen" in (out / "report.md").read_text()


def test_without_its_data_the_demo_uses_the_recall_task_and_says_so(tmp_path, capsys):
    from flashmem.cli.demo import FALLBACK_DATA, Demo, DemoConfig, choose_data
    from flashmem.data.datasets import load_examples

    demo = Demo(DemoConfig(out=str(tmp_path / "out"), data="gsm8k", data_dir=str(tmp_path / "nothing-here")))
    assert choose_data(demo) == (FALLBACK_DATA, FALLBACK_DATA, "test")
    assert "generated recall task" in capsys.readouterr().err
    assert demo.state["data_used"].startswith(FALLBACK_DATA) and "gsm8k was not found" in demo.state["data_used"]
    assert any("recall" in note for note in demo.notes)
    examples, _ = load_examples(FALLBACK_DATA, "test", limit=2)  # it is there on any machine, offline
    assert examples[0].kind == "exact"
