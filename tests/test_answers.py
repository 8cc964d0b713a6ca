"""Tests for flashmem.data.answers: extraction and scoring on realistic model outputs and their traps."""

import pytest

from flashmem.data.answers import (
    extract_boxed,
    extract_number,
    is_correct,
    normalize_math,
    reference_final,
)
from flashmem.errors import FlashmemError

# (model output, expected extracted number, reference final, expected correctness)
NUMBER_CASES = [
    ("Natalia sold 48/2 = 24 clips in May.\nShe sold 48+24 = 72 clips.\n#### 72", "72", "72", True),
    ("The total cost is $1,234.00.", "1234", "1234", True),
    ("So she pays \\$1,234.50 in total.", "1234.5", "1234.5", True),
    ("First \\boxed{12}, but wait, I made an error. The answer is \\boxed{15}.", "15", "15", True),
    ("The fraction is \\boxed{\\frac{1}{2}}", "0.5", "0.5", True),
    ("The answer is 42.", "42", "42", True),
    ("The temperature drops to -7 degrees.", "-7", "-7", True),
    ("He has 10-3 = 7 left", "7", "7", True),
    ("The discount is 25%.", "25", "25", True),
    ("I am not sure how to solve this problem.", None, "5", False),
    ("", None, "5", False),
    ("In 2019 the farm had 12 cows. By 2021 it had twice as many, so the answer is 24.", "24", "24", True),
    ("#### 1,080", "1080", "1080", True),
    ("Each costs 12.50 dollars, so #### 12.50", "12.5", "12.5", True),
    ("The result is 3.0", "3", "3", True),
    ("The change is -0 dollars", "0", "0", True),
    ("She ate 3/4 of the pie.", "0.75", "0.75", True),
    ("He ran 18 miles.\n#### 18\n\nQuestion: Sam has 5 apples and buys 7 more.", "18", "18", True),
    ("She earns 18 dollars per day. The answer is 18 dollars", "18", "18", True),
    ("So the final answer is $\\boxed{1{,}000}$.", "1000", "1000", True),
    ("The answer is 41.", "41", "42", False),
    ("#### 0.5", "0.5", "0.50", True),
    ("The answer is \\boxed{5} apples. #### 6", "6", "6", True),
    ("Total: 1,000,000 people", "1000000", "1,000,000", True),
    ("Half is .5 of the cake", "0.5", "0.5", True),
    ("The answer is \\boxed{-\\dfrac{3}{4}}.", "-0.75", "-0.75", True),
    ("The answer is \u221212", "-12", "-12", True),
    ("Truncated: \\boxed{9} and then \\boxed{1", "9", "9", True),
]


@pytest.mark.parametrize("text,number,reference,correct", NUMBER_CASES)
def test_number_extraction_and_scoring(text, number, reference, correct):
    assert extract_number(text) == number
    assert is_correct(text, reference, "number") is correct


def test_table_is_large_enough():
    assert len(NUMBER_CASES) >= 25


def test_number_tolerance_and_none():
    assert is_correct("#### 0.3333333333333333", "1/3", "number")
    assert not is_correct("#### 0.334", "1/3", "number")
    assert not is_correct(None, "3", "number")
    assert extract_number(None) is None


@pytest.mark.parametrize(
    "text,content",
    [
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("a \\boxed{1} b \\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
        ("\\fbox{7}", "7"),
        ("so \\boxed 5$.", "5"),
        ("no box here", None),
        ("\\boxed{unclosed", None),
    ],
)
def test_extract_boxed(text, content):
    assert extract_boxed(text) == content


EQUAL_MATH = [
    ("\\dfrac{1}{2}", "\\frac12"),
    ("\\frac12", "\\frac{1}{2}"),
    ("\\tfrac{1}{2}", "\\frac{1}{2}"),
    ("(1,2)", "(1, 2)"),
    ("x = 5", "5"),
    ("10^\\circ", "10"),
    ("10^{\\circ}", "10"),
    ("\\$18.00", "18"),
    ("0.5", ".5"),
    ("3.0", "3"),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})"),
    ("5\\text{ cm}", "5"),
    ("\\text{(C)}", "(C)"),
    ("\\boxed{\\frac{3}{4}}", "\\frac{3}{4}"),
    ("1,000", "1000"),
    ("3/4", "\\frac{3}{4}"),
    ("\\sqrt2", "\\sqrt{2}"),
    ("50\\%", "50"),
]


@pytest.mark.parametrize("a,b", EQUAL_MATH)
def test_normalize_math_equal_forms(a, b):
    assert normalize_math(a) == normalize_math(b)


def test_normalize_math_keeps_different_answers_apart():
    assert normalize_math("(1,2)") != normalize_math("(2,1)")
    assert normalize_math("x \\rightarrow y") != normalize_math("x y")
    assert normalize_math("\\frac{1}{2}") != normalize_math("\\frac{1}{3}")


@pytest.mark.parametrize(
    "prediction,reference,correct",
    [
        ("So the answer is $\\boxed{\\dfrac{1}{2}}$.", "\\frac12", True),
        ("We get $\\boxed{0.5}$", "\\frac{1}{2}", True),
        ("Thus $\\boxed{x = 5}$.", "5", True),
        ("The angle is $\\boxed{10^\\circ}$.", "10", True),
        ("The point is $\\boxed{(1, 2)}$.", "(1,2)", True),
        ("The point is $\\boxed{(2, 1)}$.", "(1,2)", False),
        ("Therefore the answer is $6 - 5i$.", "6 - 5i", True),
        ("The answer is 17.", "17", True),
        ("No idea.", "17", False),
        ("$\\boxed{\\frac{\\sqrt{21}}{5}}$", "\\frac{\\sqrt{21}}{5}", True),
    ],
)
def test_is_correct_math(prediction, reference, correct):
    assert is_correct(prediction, reference, "math") is correct


def test_reference_final():
    solution = "He has 48/2 = <<48/2=24>>24.\nThen 1,000 more.\n#### 1,024"
    assert reference_final(solution, "number") == "1024"
    assert reference_final(43.0, "number") == "43"
    assert reference_final(1.84, "number") == "1.84"
    assert reference_final("\\left( 3, \\frac{\\pi}{2} \\right)", "math") == "(3,\\frac{\\pi}{2})"
    assert reference_final("so $\\boxed{\\dfrac{17}{50}}$.", "math") == "\\frac{17}{50}"


def test_reference_final_errors():
    with pytest.raises(FlashmemError, match="no number"):
        reference_final("no digits here", "number")
    with pytest.raises(FlashmemError, match="kind"):
        reference_final("5", "words")
    with pytest.raises(FlashmemError, match="kind"):
        is_correct("5", "5", "fuzzy")


@pytest.mark.parametrize("text,number", [
    ("So 3 + 4 = 7 and 7 + 11 = 18. The answer is 18 dollars.\nNext, 5 more.", "18"),  # not the later 5
    ("The final answer is: $1,250.", "1250"),
    ("Then 2 + 2 = 4.\nTherefore, the answer is 4 and I am done after 9 steps", "4"),
    ("I get \\boxed{12}; the answer is 5", "12"),  # a box wins over the phrase
    ("#### 7\nthe answer is 9", "7"),  # GSM8K's own marker wins over both
    ("The answer is unclear, 3 or 8", "3"),
    ("the answer is\n42", "42"),  # nothing on the line after the phrase: the last number of the text
])
def test_the_answer_is_comes_after_boxed_and_before_the_last_number(text, number):
    assert extract_number(text) == number
