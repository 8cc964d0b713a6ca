"""results/done.py: the run scripts' "has this training finished?" check, which decides whether an
evaluation stage includes a memory. A memory stopped mid-schedule must never pass for a finished one."""
import importlib.util
import json
from pathlib import Path

SPEC = importlib.util.spec_from_file_location("done", Path(__file__).parents[1] / "results" / "done.py")
done = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(done)


def write_run(folder: Path, steps, log, state=None):
    folder.mkdir()
    (folder / "train_config.json").write_text(json.dumps({"steps": steps}))
    (folder / "log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in log))
    if state is not None:
        (folder / "checkpoint").mkdir()
        (folder / "checkpoint" / "state.json").write_text(json.dumps(state))


def test_checkpoint_decides_while_it_exists(tmp_path):
    write_run(tmp_path / "a", 100, [{"step": 100, "val_loss": 0.1}], state={"step": 99, "total_steps": 100})
    assert not done.finished(tmp_path / "a")
    write_run(tmp_path / "b", 100, [], state={"step": 100, "total_steps": 100})
    assert done.finished(tmp_path / "b")


def test_committed_memory_needs_the_last_step_and_its_validation(tmp_path):
    write_run(tmp_path / "full", 100, [{"step": 99}, {"step": 100, "val_loss": 0.06}])
    assert done.finished(tmp_path / "full")
    write_run(tmp_path / "cut", 100, [{"step": 38, "val_loss": 0.2}])
    assert not done.finished(tmp_path / "cut")
    write_run(tmp_path / "noval", 100, [{"step": 100}])
    assert not done.finished(tmp_path / "noval")


def test_missing_or_empty_files_are_not_finished(tmp_path):
    assert not done.finished(tmp_path / "absent")
    write_run(tmp_path / "empty", 100, [])
    assert not done.finished(tmp_path / "empty")
