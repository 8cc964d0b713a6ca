"""The demo pipeline end to end on a tiny model and a tiny data set, and its resume."""
import json

import pytest
from tiny_assets import arithmetic_rows, make_tiny_model_dir, write_jsonl

from flashmem.cli import main


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("FLASHMEM_CACHE", str(tmp_path / "cache"))


def demo_argv(tmp_path):
    model = make_tiny_model_dir(tmp_path / "model")
    data = write_jsonl(tmp_path / "qa.jsonl", arithmetic_rows(48))
    return ["demo", "--model", str(model), "--data", str(data), "--out", str(tmp_path / "report"),
            "--steps", "2", "--batch-size", "2", "--eval-limit", "4", "--max-new-tokens", "6",
            "--contexts", "16,32", "--calibrate-limit", "4", "--data-dir", str(tmp_path), "--minutes", "1"]


def test_demo_writes_every_report_file_and_resumes(tmp_path, monkeypatch):
    argv = demo_argv(tmp_path)
    out = tmp_path / "report"
    assert main(argv) == 0
    for name in ("report.md", "bench.json", "trace.json", "comparisons.json", "demo_state.json",
                 "entropy_trace.png", "entropy_histogram.png", "latency_vs_context.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    for name in ("bench.json", "trace.json", "comparisons.json", "demo_state.json"):
        json.loads((out / name).read_text())
    for method in ("vanilla", "flashmem", "memgen", "softprompt"):
        summary = json.loads((out / "eval" / f"heldout_{method}.json").read_text())
        assert summary["n"] == 4 and summary["settings"]["method"] == method
    report = (out / "report.md").read_text()
    assert all(m in report for m in ("flashmem", "memgen", "softprompt", "vanilla"))
    assert set(json.loads((out / "comparisons.json").read_text())) == {"heldout"}
    # the soft prompt trains at its own rate, the memories at --lr (the demo's defaults)
    lrs = {m: json.loads((out / "memories" / m / "checkpoint" / "state.json").read_text())["train_config"]["lr"]
           for m in ("flashmem", "memgen", "softprompt")}
    assert lrs == {"flashmem": 3e-4, "memgen": 3e-4, "softprompt": 1e-1}

    # Resume: drop the last stages as if the run had been killed there; only they run again.
    state = json.loads((out / "demo_state.json").read_text())
    state["done"] = [s for s in state["done"] if s not in ("bench", "eval-heldout-softprompt")]
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
    first = (out / "report.md").read_text().splitlines()[0]
    assert first.startswith(f"# flashmem demo report: `{argv[2]}` on {argv[4]} (")  # the data it really used


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
