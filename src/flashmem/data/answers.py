"""Answer extraction and scoring: math word-problem sets (GSM8K, MAWPS, MATH-500) and recall.

Three kinds of reference answer exist:

* ``"number"`` (GSM8K, MAWPS, synthetic): a single number. A model's answer is the text after
  the last ``####``, else the last ``\\boxed{...}``, else the first number on the line after the last
  "the answer is", else the last number in the text (the order of the common math harnesses, with
  GSM8K's own ``####`` first); it is compared numerically.
* ``"math"`` (MATH-500): a LaTeX expression. A model's answer is the last ``\\boxed{...}``, else
  the last ``$...$``, else the last line; it is compared as a normalised string, and
  numerically when both sides are plain numbers or integer fractions.
* ``"exact"`` (the generated recall set, flashmem.data.recall): a code such as ``4821``. A model's answer
  is the *first* number in its output, which must equal the reference exactly (thousands commas
  aside): a model that lists several codes gets no credit from a later one.

Numbers are returned as canonical decimal strings: ``"1234"``, ``"12.5"``, ``"-3"``, ``"0.75"``.
"""

from __future__ import annotations

import re
from decimal import Decimal, localcontext
from fractions import Fraction

from ..errors import FlashmemError

KINDS = ("number", "math", "exact")

# Relative tolerance with an absolute floor of the same size: 1e-6 near zero, and large
# answers (populations, money) are not failed for float rounding in the last digits.
_TOLERANCE = 1e-6

# One number token. An integer fraction comes first so "3/4" is read whole; thousands groups
# must be exactly three digits so a tuple "(1,2)" is two numbers. A minus sign only counts when
# it does not follow a digit, letter or bracket, so "10-5" ends in 5, not -5.
_NUMBER_RE = re.compile(
    r"(?<![\d.])"
    r"(?P<sign>(?<![\w)\]}])-\s?)?"
    r"(?:(?P<num>\d+)/(?P<den>\d+)(?![\d/]|\.\d)"
    r"|(?P<body>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+))"
)
_LATEX_FRAC_RE = re.compile(r"\\[dt]?frac\s*\{\s*(-?\d+)\s*\}\s*\{\s*(-?\d+)\s*\}")
_LATEX_FRAC_SHORT_RE = re.compile(r"\\[dt]?frac(\d)(\d)")
_BOX_COMMANDS = ("\\boxed", "\\fbox")
_ANSWER_IS_RE = re.compile(r"(?i)the (?:final )?answer is\b:?([^\n]*)")
# A number as written (digits, thousands commas, a decimal part); "exact" compares its digits.
_FIRST_NUMBER_RE = re.compile(r"(?<![\d.,])(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?")


def _prepare_text(text: str) -> str:
    """Rewrite LaTeX and unicode spellings of numbers so the plain number regex can read them."""
    text = text.replace("\u2212", "-").replace("{,}", ",").replace("\\!", "")
    text = text.replace("\\$", "$").replace("\\%", "%")
    text = _LATEX_FRAC_RE.sub(r"\1/\2", text)
    return _LATEX_FRAC_SHORT_RE.sub(r"\1/\2", text)


def _canonical(value: Fraction) -> str:
    """Exact decimal for terminating values, shortest float repr otherwise."""
    if value.denominator == 1:
        return str(value.numerator)
    den = value.denominator
    for prime in (2, 5):
        while den % prime == 0:
            den //= prime
    if den != 1:
        return repr(float(value))
    with localcontext() as ctx:
        ctx.prec = 60
        exact = Decimal(value.numerator) / Decimal(value.denominator)
    return format(exact, "f").rstrip("0").rstrip(".")


def _token_value(match: re.Match[str]) -> Fraction | None:
    negative = bool(match.group("sign"))
    if match.group("num") is not None:
        den = int(match.group("den"))
        if den == 0:
            return None
        value = Fraction(int(match.group("num")), den)
    else:
        value = Fraction(Decimal(match.group("body").replace(",", "")))
    return -value if negative else value


def _numbers(text: str) -> list[Fraction]:
    values = (_token_value(m) for m in _NUMBER_RE.finditer(text))
    return [v for v in values if v is not None]


def _parse_number(text: str) -> Fraction | None:
    """The value of a string that is one number and nothing else (after $, %, commas)."""
    cleaned = _prepare_text(text).strip().strip("$").strip().rstrip(".").rstrip("%").strip()
    match = _NUMBER_RE.fullmatch(cleaned)
    return _token_value(match) if match else None


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` or ``\\fbox{...}`` whose braces balance.

    A truncated last box (generation cut off) is passed over in favour of an earlier complete
    one. ``\\boxed 5`` (no braces) yields ``"5"``.
    """
    if not text:
        return None
    starts = sorted(
        (m.start(), m.end())
        for cmd in _BOX_COMMANDS
        for m in re.finditer(re.escape(cmd) + r"(?![a-zA-Z])", text)
    )
    for _, end in reversed(starts):
        rest = text[end:]
        stripped = rest.lstrip()
        if not stripped.startswith("{"):
            bare = re.match(r"\s+([^\s$]+)", rest)
            if bare:
                return bare.group(1)
            continue
        content = _braced(stripped)
        if content is not None:
            return content.strip()
    return None


def _braced(text: str) -> str | None:
    """Content of the brace group at the start of ``text``, or None when it never closes."""
    depth = 0
    for i, ch in enumerate(text):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[1:i]
    return None


def extract_number(text: str | None) -> str | None:
    """The model's final number in GSM8K/MAWPS convention, canonicalised; None when absent."""
    if not text:
        return None
    text = _prepare_text(str(text))
    if "####" in text:
        tail = text.rsplit("####", 1)[1]
        # Only the line after ####: models often run on into an invented next question.
        lines = [line for line in tail.splitlines() if line.strip()]
        found = _numbers(lines[0]) if lines else []
        if found:
            return _canonical(found[0])
    boxed = extract_boxed(text)
    if boxed is not None:
        found = _numbers(boxed)
        if found:
            return _canonical(found[-1])
    said = _ANSWER_IS_RE.findall(text)
    if said:  # what the text says the answer is: the first number of the line after the last "the answer is"
        found = _numbers(said[-1])
        if found:
            return _canonical(found[0])
    found = _numbers(text)
    return _canonical(found[-1]) if found else None


def extract_first_number(text: str | None) -> str | None:
    """The first number in ``text`` as written, thousands commas removed ("4,821." -> "4821")."""
    match = _FIRST_NUMBER_RE.search(text or "")
    return match.group(0).replace(",", "") if match else None


# --------------------------------------------------------------------------- MATH normalisation

_GREEK = "alpha|beta|gamma|delta|theta|lambda|mu|phi|psi|omega|rho|sigma|tau"
_VAR_PREFIX_RE = re.compile(rf"^\s*(?:[a-zA-Z]|\\(?:{_GREEK}))\s*=\s*(?P<rhs>[^=]+)$")
_UNIT_SUFFIX_RE = re.compile(r"(?<=\S)\s*\\(?:text|mbox|mathrm)\{[^{}]*\}(?:\^\{?\d\}?)?\s*$")
_TEXT_WRAP_RE = re.compile(r"\\(?:text|textbf|mbox|mathrm|mathbf)\{([^{}]*)\}")
_SPACING = ("\\!", "\\,", "\\;", "\\:", "\\quad", "\\qquad", "\\displaystyle", "~")


def _fix_fracs(s: str) -> str:
    """Give every ``\\frac`` argument braces: ``\\frac12`` and ``\\frac1{2}`` -> ``\\frac{1}{2}``."""
    out: list[str] = []
    i = 0
    while True:
        j = s.find("\\frac", i)
        if j < 0:
            out.append(s[i:])
            return "".join(out)
        out.append(s[i : j + 5])
        i = j + 5
        for _ in range(2):
            if i >= len(s):
                break
            if s[i] == "{":
                group = _braced(s[i:])
                if group is None:
                    break
                out.append("{" + group + "}")
                i += len(group) + 2
            elif s[i] == "\\":
                break  # \frac\pi2 and the like: leave as written
            else:
                out.append("{" + s[i] + "}")
                i += 1


def _canonical_numbers_in(s: str) -> str:
    """Write every decimal in an expression canonically: .5 -> 0.5, 12.50 -> 12.5, 3.0 -> 3."""
    s = re.sub(r"(?<![\d.])\.(\d)", r"0.\1", s)
    s = re.sub(r"(\d+)\.0+(?![\d])", r"\1", s)
    return re.sub(r"(\d+\.\d*?[1-9])0+(?![\d])", r"\1", s)


def _strip_outer_braces(s: str) -> str:
    while s.startswith("{") and _braced(s) == s[1:-1]:
        s = s[1:-1]
    return s


def normalize_math(ans: str) -> str:
    """Normalise a MATH-style LaTeX answer so common equal spellings compare equal as strings."""
    s = str(ans).strip()
    if s.startswith(_BOX_COMMANDS):
        boxed = extract_boxed(s)
        s = boxed if boxed is not None else s
    s = s.replace("\n", " ")
    for token in _SPACING:
        s = s.replace(token, " ")
    # Lookahead keeps \rightarrow and \leq intact while dropping \left( and \right).
    s = re.sub(r"\\(?:left|right)(?![a-zA-Z])", "", s)
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?", "", s)
    s = s.replace("\\$", "").replace("$", "").replace("\\%", "").replace("%", "")
    # A trailing \text{...} after a value is a unit ("10\text{ cm}"); elsewhere text is content.
    s = _UNIT_SUFFIX_RE.sub("", s)
    s = _TEXT_WRAP_RE.sub(r"\1", s)
    prefix = _VAR_PREFIX_RE.match(s)
    if prefix:
        s = prefix.group("rhs")
    s = re.sub(r"\s+", "", s).rstrip(".")
    s = re.sub(r"\\sqrt(\w)", r"\\sqrt{\1}", s)
    s = _fix_fracs(s)
    if re.fullmatch(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?", s):
        s = s.replace(",", "")
    simple = re.fullmatch(r"(-?)(\d+)/(\d+)", s)
    if simple:
        s = f"{simple.group(1)}\\frac{{{simple.group(2)}}}{{{simple.group(3)}}}"
    s = _canonical_numbers_in(s)
    return _strip_outer_braces(s)


def _math_value(normalised: str) -> Fraction | None:
    """Numeric value of a normalised MATH answer that is a plain number or integer fraction."""
    frac = re.fullmatch(r"(-?)\\frac\{(-?\d+)\}\{(\d+)\}", normalised)
    if frac:
        if int(frac.group(3)) == 0:
            return None
        value = Fraction(int(frac.group(2)), int(frac.group(3)))
        return -value if frac.group(1) else value
    return _parse_number(normalised)


def _math_candidate(text: str) -> str | None:
    """The model's MATH answer: last box, else last $...$, else the last non-empty line."""
    boxed = extract_boxed(text)
    if boxed is not None:
        return boxed
    inline = re.findall(r"\$+([^$]+)\$+", text)
    if inline:
        return inline[-1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return None
    last = lines[-1]
    said = re.search(r"(?i)answer\s*(?:is|:)\s*(.+)$", last)
    return said.group(1) if said else last


def _close(a: Fraction, b: Fraction) -> bool:
    return abs(float(a) - float(b)) <= _TOLERANCE * max(1.0, abs(float(b)))


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise FlashmemError(f"answer kind must be one of {', '.join(KINDS)}, got {kind!r}")


def is_correct(prediction_text: str | None, reference_final: str, kind: str) -> bool:
    """Whether a model's full output answers correctly against a reference final answer."""
    _check_kind(kind)
    if not prediction_text:
        return False
    if kind == "exact":
        predicted = extract_first_number(prediction_text)
        return predicted is not None and predicted == str(reference_final).strip()
    if kind == "number":
        predicted = extract_number(prediction_text)
        reference = _parse_number(str(reference_final))
        if reference is None:
            found = extract_number(str(reference_final))
            reference = Fraction(Decimal(found)) if found is not None else None
        if predicted is None or reference is None:
            return False
        return _close(Fraction(Decimal(predicted)), reference)
    candidate = _math_candidate(prediction_text)
    if candidate is None:
        return False
    predicted_norm = normalize_math(candidate)
    reference_norm = normalize_math(reference_final)
    if predicted_norm and predicted_norm == reference_norm:
        return True
    a, b = _math_value(predicted_norm), _math_value(reference_norm)
    return a is not None and b is not None and _close(a, b)


def reference_final(answer_field: object, kind: str) -> str:
    """Canonical final answer from a dataset's answer field.

    ``exact``: the first number of the field as written (``"The code is 4821."`` -> ``"4821"``).
    ``number``: the number after ``####`` (else boxed, else last number) of a GSM8K solution,
    or a bare number such as MAWPS's ``43.0`` -> ``"43"``. ``math``: the boxed content if any,
    else the whole field, through :func:`normalize_math`. Raises FlashmemError when empty.
    """
    _check_kind(kind)
    if isinstance(answer_field, bool) or answer_field is None:
        raise FlashmemError(f"reference answer must be text or a number, got {answer_field!r}")
    text = repr(answer_field) if isinstance(answer_field, float) else str(answer_field)
    if kind == "exact":
        found = extract_first_number(text)
        if found is None:
            raise FlashmemError(f"no number found in reference answer {text[-80:]!r}")
        return found
    if kind == "number":
        found = extract_number(text)
        if found is None:
            raise FlashmemError(f"no number found in reference answer {text[-80:]!r}")
        return found
    boxed = extract_boxed(text)
    final = normalize_math(boxed if boxed is not None else text)
    if not final:
        raise FlashmemError(f"empty reference answer {text[-80:]!r}")
    return final
