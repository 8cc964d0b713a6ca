"""The two graders (evaluation/grading.py): flashmem's extraction and Hugging Face's math-verify, on answers
whose forms differ, and re-grading finished runs in `flashmem compare`."""
import json

import pytest

from flashmem.errors import FlashmemError
from flashmem.evaluation.grading import disagreements, grade, kind_of, regrade

math_verify = pytest.importorskip("math_verify")


@pytest.mark.parametrize("prediction,final,kind,ours,theirs", [
    ("so the answer is \\boxed{\\frac{1}{2}}", "\\frac{1}{2}", "math", True, True),
    ("the answer is \\boxed{0.5}", "\\frac{1}{2}", "math", True, True),
    ("\\boxed{\\dfrac{3}{4}}", "0.75", "math", True, True),
    ("x = \\boxed{2\\sqrt{2}}", "\\sqrt{8}", "math", False, True),  # equivalent, written differently
    ("She pays 12 dollars.\n#### 12", "12", "number", True, True),
    ("The total is 1,234 dollars.", "1234", "number", True, True),
    ("I think it is 7, no wait: \\boxed{9}", "7", "number", False, False),
])
def test_both_graders_on_answer_forms(prediction, final, kind, ours, theirs):
    assert grade(prediction, final, kind, "flashmem") is ours
    assert grade(prediction, final, kind, "math-verify") is theirs


def test_regrade_and_disagreements_keep_unanswered_records():
    records = {1: {"prediction": "\\boxed{2\\sqrt{2}}", "final": "\\sqrt{8}", "correct": False},
               2: {"prediction": None, "final": "3", "correct": None},
               3: {"prediction": "\\boxed{3}", "final": "3", "correct": True}}
    again = regrade(records, "math", "math-verify")
    assert [again[q]["correct"] for q in (1, 2, 3)] == [True, None, True]
    assert [d["id"] for d in disagreements(records, "math")] == [1]


def test_kind_comes_from_the_data_name_and_unknown_graders_are_refused():
    assert kind_of({"data": "recall:context=512,facts=16"}) == "exact" and kind_of({"data": "gsm8k"}) == "number"
    with pytest.raises(FlashmemError, match="cannot tell how to grade"):
        kind_of({"data": "my.jsonl"})
    with pytest.raises(FlashmemError, match="grader must be one of"):
        grade("1", "1", "number", "exact-match")


def test_compare_regrades_and_lists_disagreements(tmp_path, capsys):
    from flashmem.cli import main
    from flashmem.evaluation.records import RecordFile

    def run(name, predictions):
        identity = {"method": name, "data": "math500", "split": "test"}
        records = RecordFile(tmp_path / f"{name}.records.jsonl", identity, {**identity, "label": name})
        records.append([{"id": i, "question_sha": f"q{i}", "final": f, "prediction": p, "correct": grade(p, f, "math"),
                         "nll": None} for i, (p, f) in enumerate(predictions)])
        return str(records.path)

    a = run("a", [("\\boxed{2\\sqrt{2}}", "\\sqrt{8}"), ("\\boxed{1}", "1")])
    b = run("b", [("\\boxed{\\sqrt{8}}", "\\sqrt{8}"), ("\\boxed{2}", "1")])
    out, summary = tmp_path / "dis.json", tmp_path / "cmp.json"
    assert main(["compare", a, b, "--grader", "math-verify", "--disagreements", str(out), "--out", str(summary)]) == 0
    assert "graded again by math-verify" in capsys.readouterr().out
    accuracy = [r["accuracy"] for r in json.loads(summary.read_text())["runs"]]
    assert accuracy == [1.0, 0.5]  # a's first answer counts under math-verify, not under flashmem's grader
    assert main(["compare", a, b, "--out", str(summary)]) == 0
    assert [r["accuracy"] for r in json.loads(summary.read_text())["runs"]] == [0.5, 0.5]
    found = json.loads(out.read_text())
    assert [d["id"] for d in found[a]] == [0] and found[b] == []


def test_eval_grades_with_the_chosen_grader(tmp_path):
    from tiny_assets import arithmetic_rows, make_tiny_model_dir, write_jsonl

    from flashmem.cli import main
    from flashmem.evaluation.records import read_records

    model = str(make_tiny_model_dir(tmp_path / "model"))
    data = str(write_jsonl(tmp_path / "q.jsonl", arithmetic_rows(3)))
    out = tmp_path / "mv.json"
    assert main(["eval", "--model", model, "--data", data, "--limit", "3", "--method", "vanilla", "--max-new-tokens",
                 "4", "--no-nll", "--grader", "math-verify", "--out", str(out)]) == 0
    header, records = read_records(out.with_suffix(".records.jsonl"))
    assert header["identity"]["grader"] == "math-verify"
    assert [r["correct"] for r in records] == [grade(r["prediction"], r["final"], "number", "math-verify") for r in records]
