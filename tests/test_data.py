"""Tests for flashmem.data.datasets: named sets, JSONL files, bad-row handling, splits and synthetic data."""

import json
import os
import sys
import types
from pathlib import Path

import pytest

from flashmem.data.answers import is_correct
from flashmem.data.datasets import (
    DataReport,
    load_examples,
    resolve_data_dir,
    split_validation,
)
from flashmem.errors import FlashmemError

GSM_ROWS = [
    {"question": "Natalia sold 48 clips in April and half as many in May. How many in total?",
     "answer": "She sold 48/2 = <<48/2=24>>24 in May.\nIn total 48+24 = <<48+24=72>>72.\n#### 72"},
    {"question": "A farm sells 1,000 eggs twice. How many eggs?",
     "answer": "It sells 1000*2 = <<1000*2=2000>>2000.\n#### 2,000"},
    {"question": "Weng earns $12 an hour for 50 minutes. How much?",
     "answer": "12/60 = $<<12/60=0.2>>0.2 per minute.\n0.2 x 50 = $<<0.2*50=10>>10.\n#### 10"},
]


def write_jsonl(path: Path, lines: list) -> Path:
    """Write rows; dicts become JSON, strings are written verbatim (for broken lines)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines)
    path.write_text(text + "\n", encoding="utf-8")
    return path


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A mini data folder in the named-set layout."""
    write_jsonl(tmp_path / "gsm8k" / "train.jsonl", GSM_ROWS)
    write_jsonl(tmp_path / "gsm8k" / "test.jsonl", GSM_ROWS[:2])
    write_jsonl(tmp_path / "math500" / "test.jsonl", [
        {"problem": "Compute $1/2 + 0$.", "solution": "It is $\\boxed{\\dfrac{1}{2}}$.",
         "answer": "\\dfrac{1}{2}"},
    ])
    write_jsonl(tmp_path / "mawps" / "test.jsonl", [
        {"input": "Joan had 70 shells and has 27 left. How many did she give?", "target": 43.0},
        {"input": "Each of 3 friends paid 1.5 dollars. What was the bill?", "target": 4.5},
    ])
    return tmp_path


def test_gsm8k_named_set(data_dir: Path):
    examples, report = load_examples("gsm8k", "train", data_dir=str(data_dir))
    assert [ex.final for ex in examples] == ["72", "2000", "10"]
    assert "<<" not in examples[0].answer and examples[0].answer.endswith("#### 72")
    assert examples[0].kind == "number" and examples[0].source == "gsm8k"
    assert [ex.line for ex in examples] == [1, 2, 3]
    assert report.rows == 3 and report.kept == 3 and not report.skipped
    for ex in examples:
        assert is_correct(ex.answer, ex.final, ex.kind)


def test_math500_and_mawps(data_dir: Path):
    math, _ = load_examples("math500", "test", data_dir=str(data_dir))
    assert math[0].kind == "math" and math[0].final == "\\frac{1}{2}"
    assert is_correct(math[0].answer, math[0].final, "math")
    mawps, _ = load_examples("MAWPS", "test", data_dir=str(data_dir))
    assert [ex.final for ex in mawps] == ["43", "4.5"]
    assert mawps[0].answer == "The answer is 43.\n#### 43"
    with pytest.raises(FlashmemError, match="no split 'train'"):
        load_examples("math500", "train", data_dir=str(data_dir))


def test_data_dir_from_environment(data_dir: Path, monkeypatch):
    monkeypatch.setenv("FLASHMEM_DATA_DIR", str(data_dir))
    assert resolve_data_dir() == data_dir
    examples, _ = load_examples("gsm8k", "test", limit=1)
    assert len(examples) == 1


def test_real_data_if_configured():
    """Reads the real sets only when FLASHMEM_DATA_DIR points at them; cheap (test splits)."""
    real = os.environ.get("FLASHMEM_DATA_DIR")
    if not real or not (Path(real) / "gsm8k" / "test.jsonl").is_file():
        pytest.skip("FLASHMEM_DATA_DIR is not set to a folder with gsm8k/test.jsonl")
    examples, report = load_examples("gsm8k", "test", data_dir=real)
    assert report.kept == len(examples) > 1000 and not report.skipped
    assert all(is_correct(ex.answer, ex.final, "number") for ex in examples)


def test_missing_named_set_explains_how_to_fix(tmp_path: Path):
    with pytest.raises(FlashmemError) as err:
        load_examples("gsm8k", "train", data_dir=str(tmp_path))
    message = str(err.value)
    assert str(tmp_path / "gsm8k" / "train.jsonl") in message
    assert "--data-dir" in message and "FLASHMEM_DATA_DIR" in message


def test_unknown_name(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FlashmemError, match="unknown dataset 'no-such-set'"):
        load_examples("no-such-set")
    with pytest.raises(FlashmemError, match="not found"):
        load_examples(str(tmp_path / "missing.jsonl"))


def test_bad_json_line_reports_line_number(tmp_path: Path):
    path = write_jsonl(tmp_path / "d.jsonl", [GSM_ROWS[0], '{"question": "broken', GSM_ROWS[1]])
    with pytest.raises(FlashmemError) as err:
        load_examples(str(path))
    assert f"{path} line 2: malformed JSON" in str(err.value)


@pytest.mark.parametrize(
    "bad,reason",
    [
        ({"question": "Q only"}, "missing field"),
        ({"question": "   ", "answer": "#### 3"}, "'question' is empty"),
        ({"question": "Q", "answer": ""}, "'answer' is empty"),
        ('["a", "list"]', "expected a JSON object"),
        ({"question": "Q", "answer": ["x"]}, "must be text"),
        ({"question": "Q", "answer": "no number at all"}, "no number found"),
    ],
)
def test_bad_rows_stop_with_line_and_reason(tmp_path: Path, bad, reason):
    path = write_jsonl(tmp_path / "d.jsonl", [GSM_ROWS[0], GSM_ROWS[1], bad])
    with pytest.raises(FlashmemError, match="line 3: .*" + reason.replace("'", ".")):
        load_examples(str(path))


def test_skip_policy_counts_and_summary(tmp_path: Path):
    lines = [GSM_ROWS[0], "not json", {"question": "Q"}, "", GSM_ROWS[1], "[1, 2]", GSM_ROWS[2]]
    path = write_jsonl(tmp_path / "d.jsonl", lines)
    examples, report = load_examples(str(path), on_error="skip")
    assert len(examples) == 3 and report.kept == 3
    assert report.rows == 6  # the blank line 4 is not a row
    assert [line for line, _ in report.skipped] == [2, 3, 6]
    summary = report.summary()
    assert summary.startswith(f"{path}: 6 rows, 3 kept, 3 skipped (line 2: malformed JSON")
    assert "line 3: missing field" in summary


def test_summary_lists_at_most_five():
    report = DataReport("x.jsonl", rows=10, kept=3, skipped=[(i, "bad") for i in range(7)])
    assert report.summary().endswith("line 4: bad; and 2 more)")
    assert DataReport("y.jsonl", 2, 2).summary() == "y.jsonl: 2 rows, 2 kept, 0 skipped"


def test_empty_dataset_always_fails(tmp_path: Path):
    path = write_jsonl(tmp_path / "d.jsonl", ["oops", {"question": "Q"}])
    with pytest.raises(FlashmemError, match="no usable examples.*2 rows, 0 kept"):
        load_examples(str(path), on_error="skip")
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n\n", encoding="utf-8")
    with pytest.raises(FlashmemError, match="no usable examples"):
        load_examples(str(blank))


def test_jsonl_fields_and_kind(tmp_path: Path):
    custom = write_jsonl(tmp_path / "c.jsonl", [{"q": "What is 2+2?", "a": 4}])
    examples, _ = load_examples(str(custom), question_field="q", answer_field="a")
    assert examples[0].final == "4" and examples[0].answer == "The answer is 4.\n#### 4"
    boxed = write_jsonl(tmp_path / "b.jsonl", [{"problem": "P", "answer": "so $\\boxed{\\tfrac12}$"}])
    examples, _ = load_examples(str(boxed))
    assert examples[0].kind == "math" and examples[0].final == "\\frac{1}{2}"
    mawps_like = write_jsonl(tmp_path / "m.jsonl", [{"input": "I", "target": 12.5}])
    examples, _ = load_examples(str(mawps_like))
    assert examples[0].kind == "number" and examples[0].final == "12.5"


def test_limit_and_argument_checks(data_dir: Path):
    examples, report = load_examples("gsm8k", data_dir=str(data_dir), limit=2)
    assert len(examples) == 2 and report.rows == 2
    with pytest.raises(FlashmemError, match="on_error"):
        load_examples("gsm8k", data_dir=str(data_dir), on_error="ignore")
    with pytest.raises(FlashmemError, match="limit"):
        load_examples("gsm8k", data_dir=str(data_dir), limit=0)


def test_split_validation_is_deterministic():
    examples, _ = load_examples("recall:context=128,facts=2", "train", limit=30)
    train, val = split_validation(examples, 5, seed=1)
    again_train, again_val = split_validation(examples, 5, seed=1)
    assert (train, val) == (again_train, again_val)
    assert len(train) == 25 and len(val) == 5
    assert set(train).isdisjoint(val) and set(train) | set(val) == set(examples)
    assert split_validation(examples, 5, seed=2)[1] != val
    with pytest.raises(FlashmemError, match="validation size"):
        split_validation(examples, 30, seed=0)


def test_hub_fallback_uses_datasets_when_importable(tmp_path: Path, monkeypatch):
    """A stand-in `datasets` module: the hub path must be taken only after the local miss."""
    calls = []

    def load_dataset(hub_id, config, split):
        calls.append((hub_id, config, split))
        return [GSM_ROWS[0]]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    examples, report = load_examples("gsm8k", "test", data_dir=str(tmp_path))
    assert calls == [("openai/gsm8k", "main", "test")]
    assert examples[0].final == "72" and report.path == "hf://openai/gsm8k/test"


def test_no_data_folder_is_guessed_from_the_working_directory(tmp_path: Path, monkeypatch):
    """A ../shared/data beside the working directory is this repository's convention, not a user's: without
    --data-dir or $FLASHMEM_DATA_DIR it is not read, and the error names both as tried (MAWPS has no hub copy)."""
    write_jsonl(tmp_path / "shared" / "data" / "mawps" / "test.jsonl", [{"input": "One and one?", "target": 2.0}])
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    monkeypatch.delenv("FLASHMEM_DATA_DIR", raising=False)
    assert resolve_data_dir() is None
    with pytest.raises(FlashmemError) as err:
        load_examples("mawps", "test")
    message = str(err.value)
    assert "--data-dir (not given)" in message and "$FLASHMEM_DATA_DIR (unset)" in message
