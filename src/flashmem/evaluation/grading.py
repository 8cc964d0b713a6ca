"""Graders: whether a model's answer matches the reference.

- `flashmem`: data/answers.py, the common math harnesses' extraction (`####`, last `\\boxed{}`, "the
  answer is", last number) compared numerically or as normalised LaTeX; the default.
- `math-verify`: Hugging Face's verifier (the one lighteval uses), an optional extra (`pip install
  'flashmem[math-verify]'`): it parses the answer and the reference with SymPy (LaTeX and plain
  expressions) and checks their equivalence, so `\\frac{1}{2}`, `0.5` and `1/2` agree.

Records keep each answer's text, so a finished run can be graded again by either (`flashmem compare
--grader`), and the answers on which the two disagree listed for a hand check (`--disagreements`).
"""
from __future__ import annotations

from ..data.answers import is_correct
from ..errors import FlashmemError

GRADERS = ("flashmem", "math-verify")
MATH_VERIFY_MISSING = "math-verify is not installed: pip install 'flashmem[math-verify]'"
# The answer kind of each named data set (records do not store it; recall specs start with "recall").
KIND_OF_DATA = {"gsm8k": "number", "mawps": "number", "math500": "math", "recall": "exact"}


def grade(prediction: str | None, final: str, kind: str, grader: str = "flashmem") -> bool:
    """Whether `prediction` (a model's whole answer) answers `final` under the grader."""
    if grader == "flashmem":
        return is_correct(prediction, final, kind)
    if grader != "math-verify":
        raise FlashmemError(f"grader must be one of {', '.join(GRADERS)}, got {grader!r}")
    return math_verify_correct(prediction, final)


def math_verify_correct(prediction: str | None, final: str) -> bool:
    try:
        from math_verify import parse, verify
    except ImportError:
        raise FlashmemError(MATH_VERIFY_MISSING) from None
    if not prediction:
        return False
    gold = parse(f"${final}$") or parse(str(final))  # a bare reference is read as the LaTeX it is
    answer = parse(prediction)
    return bool(gold) and bool(answer) and bool(verify(gold, answer))


def kind_of(settings: dict) -> str:
    """The answer kind of a run from its settings' data name."""
    data = str(settings.get("data") or "").strip().lower()
    kind = KIND_OF_DATA.get(data.split(":")[0])
    if kind is None:
        raise FlashmemError(f"cannot tell how to grade answers on data {data!r}: re-grading knows "
                            f"{', '.join(KIND_OF_DATA)}")
    return kind


def regrade(records: dict, kind: str, grader: str) -> dict:
    """The records with `correct` recomputed by the grader (records without an answer keep None)."""
    return {qid: {**r, "correct": None if r.get("prediction") is None else grade(r["prediction"], r["final"], kind, grader)}
            for qid, r in records.items()}


def disagreements(records: dict, kind: str) -> list[dict]:
    """The answered records on which flashmem's grader and math-verify disagree."""
    out = []
    for qid, r in records.items():
        if r.get("prediction") is None:
            continue
        ours, theirs = grade(r["prediction"], r["final"], kind), math_verify_correct(r["prediction"], r["final"])
        if ours != theirs:
            out.append({"id": qid, "final": r["final"], "flashmem": ours, "math_verify": theirs,
                        "answer_end": r["prediction"][-300:]})
    return out
