"""Dataset loading: GSM8K, MATH-500, MAWPS and plain JSONL files into :class:`Example` rows.

Local files are read from ``data_dir`` (the ``--data-dir`` argument, else ``$FLASHMEM_DATA_DIR``); no
folder is guessed. The Hugging Face hub is tried next, only when the
``datasets`` library is importable (a dependency; tests stub it). Bad rows stop loading with a FlashmemError naming
file and line, or with ``on_error="skip"`` are dropped and listed in the :class:`DataReport`.

Answer texts (the training target) per source:

* gsm8k: the solution with calculator annotations ``<<48/2=24>>`` removed; ends ``#### N``.
* math500: the ``solution`` field as is (it contains ``\\boxed{...}``).
* mawps, and JSONL rows whose answer is a bare number: ``"The answer is N.\\n#### N"``.
* other JSONL/hub rows: the answer field as is (GSM8K calculator annotations removed).
"""

from __future__ import annotations

import json
import os
import random
import re
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..errors import FlashmemError
from .answers import reference_final
from .examples import DataReport, Example
from .recall import is_recall_spec, load_recall

ENV_DATA_DIR = "FLASHMEM_DATA_DIR"
ON_ERROR = ("stop", "skip")
_CALC_ANNOTATION_RE = re.compile(r"<<[^<>]*=[^<>]*>>")
_QUESTION_FIELDS = ("question", "problem", "input")
_ANSWER_FIELDS = ("answer", "solution", "target")
_BARE_NUMBER_RE = re.compile(r"\s*-?\$?[\d,]*\.?\d+\s*")


class _RowError(Exception):
    """A problem with one row; turned into a FlashmemError or a skip entry by the caller."""


def resolve_data_dir(data_dir: str | None = None) -> Path | None:
    """The data folder: the argument, else $FLASHMEM_DATA_DIR, else None (no folder is guessed)."""
    if data_dir:
        return Path(data_dir).expanduser()
    env = os.environ.get(ENV_DATA_DIR)
    return Path(env).expanduser() if env else None


def _folders_tried(data_dir: str | None, path: Path | None) -> str:
    """What the local look-up tried, in order, for the error that says a set is missing."""
    given = f"--data-dir {data_dir}" if data_dir else "--data-dir (not given)"
    env = os.environ.get(ENV_DATA_DIR)
    env_text = f"${ENV_DATA_DIR}={env}" + (" (not used: --data-dir wins)" if data_dir else "") if env else \
        f"${ENV_DATA_DIR} (unset)"
    found = f"; looked for {path} (missing)" if path is not None else ""
    return f"{given}, {env_text}{found}"


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _text_field(row: dict[str, Any], name: str) -> str:
    if name not in row:
        raise _RowError(f"missing field {name!r} (has {', '.join(map(repr, row)) or 'none'})")
    value = row[name]
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise _RowError(f"field {name!r} must be text, got {_short(value)}")
    text = value if isinstance(value, str) else repr(value)
    if not text.strip():
        raise _RowError(f"field {name!r} is empty")
    return text


def _final(answer: Any, kind: str) -> str:
    try:
        return reference_final(answer, kind)
    except FlashmemError as err:
        raise _RowError(str(err)) from None


def _number_answer_text(final: str) -> str:
    # MAWPS has no worked solutions; this keeps the GSM8K "#### N" target shape.
    return f"The answer is {final}.\n#### {final}"


def _parse_gsm8k(row: dict[str, Any], line: int, source: str) -> Example:
    question = _text_field(row, "question")
    given = _text_field(row, "answer")
    answer = _CALC_ANNOTATION_RE.sub("", given)
    return Example(question, answer, _final(answer, "number"), "number", source, line, rationale=given)


def memgen_target(example: Example) -> Example:
    """The example with MemGen's SFT target (its GSM8K builder): the data set's rationale, calculator
    annotations kept, up to the "####" line, followed directly by \\boxed{the text after "####"}."""
    if not example.rationale:
        raise FlashmemError(f"{example.source} line {example.line}: MemGen's targets need GSM8K's rationales "
                            "(--data gsm8k); this row has none")
    rationale, _, final = example.rationale.partition("\n####")
    if not final.strip():
        raise FlashmemError(f"{example.source} line {example.line}: the rationale has no '#### N' line")
    return replace(example, answer=(rationale + "\\boxed{" + final.strip() + "}").strip())


def _parse_math500(row: dict[str, Any], line: int, source: str) -> Example:
    question = _text_field(row, "problem")
    solution = _text_field(row, "solution")
    # The short "answer" field is authoritative; the boxed solution is the fallback.
    given = _text_field(row, "answer") if "answer" in row else solution
    return Example(question, solution, _final(given, "math"), "math", source, line)


def _parse_mawps(row: dict[str, Any], line: int, source: str) -> Example:
    question = _text_field(row, "input")
    final = _final(_text_field(row, "target"), "number")
    return Example(question, _number_answer_text(final), final, "number", source, line)


def _read_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed object) per non-blank line; undecodable lines yield _RowError."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                yield number, _RowError("not valid UTF-8")
                continue
            if not text.strip():
                continue  # blank lines (a trailing newline) are not rows
            try:
                yield number, json.loads(text)
            except json.JSONDecodeError as err:
                yield number, _RowError(f"malformed JSON ({err.msg}): {_short(text.strip())}")


def _collect(
    rows: Iterable[tuple[int, Any]], parse, report: DataReport, on_error: str, limit: int | None
) -> list[Example]:
    """Apply ``parse`` to each row, stopping or skipping on bad ones; fail if none is kept."""
    kept: list[Example] = []
    for line, row in rows:
        if limit is not None and len(kept) >= limit:
            break
        report.rows += 1
        try:
            if isinstance(row, _RowError):
                raise row
            if not isinstance(row, dict):
                raise _RowError(f"expected a JSON object, got {_short(row)}")
            kept.append(parse(row, line))
        except _RowError as err:
            if on_error == "stop":
                # Read by command-line and Python users alike: name both ways of skipping.
                hint = "; fix the line, or skip bad rows (--on-bad-data skip; on_error='skip' in Python)"
                raise FlashmemError(f"{report.path} line {line}: {err}{hint}") from None
            report.skipped.append((line, str(err)))
    report.kept = len(kept)
    if not kept:
        raise FlashmemError(f"no usable examples: {report.summary()}")
    return kept


def _present(row: dict[str, Any], candidates: tuple[str, ...], what: str) -> str:
    for name in candidates:
        if name in row:
            return name
    has = ", ".join(map(repr, row)) or "none"
    raise _RowError(f"missing field: no {what} field among {', '.join(candidates)} (has {has})")


def _guess_kind(rows: list[tuple[int, Any]], answer_field: str | None) -> str:
    """The file-wide kind: math for a MATH layout (a solution field) or any boxed answer."""
    names = (answer_field,) if answer_field else _ANSWER_FIELDS
    for _, row in rows:
        if isinstance(row, dict):
            if answer_field is None and "solution" in row:
                return "math"
            if any("\\boxed" in str(row.get(name, "")) for name in names):
                return "math"
    return "number"


def _generic_parser(question_field: str | None, answer_field: str | None, kind: str, source: str):
    """Parser for JSONL/hub rows with given or guessed field names."""

    def parse(row: dict[str, Any], line: int) -> Example:
        question = _text_field(row, question_field or _present(row, _QUESTION_FIELDS, "question"))
        if answer_field is None and "solution" in row:
            # MATH layout: the worked solution is the target, the short "answer" the final.
            answer = _text_field(row, "solution")
            final = _final(_text_field(row, "answer") if "answer" in row else answer, kind)
        else:
            answer = _text_field(row, answer_field or _present(row, _ANSWER_FIELDS, "answer"))
            if kind == "number":
                answer = _CALC_ANNOTATION_RE.sub("", answer)
            final = _final(answer, kind)
            if kind == "number" and _BARE_NUMBER_RE.fullmatch(answer):
                answer = _number_answer_text(final)
        return Example(question, answer, final, kind, source, line)

    return parse


def _hub_rows(hub_id: str, config: str | None, split: str) -> tuple[list | None, str]:
    """Rows from the Hugging Face hub, or (None, why not) when unavailable."""
    try:
        import datasets  # a dependency, imported only when the hub is needed (it is slow to import)
    except ImportError:
        return None, "the 'datasets' library is not installed, so the hub was not tried"
    try:
        table = datasets.load_dataset(hub_id, config, split=split)
    except Exception as err:  # the hub raises many types; any failure means "not available"
        return None, f"hub {hub_id!r} split {split!r} failed: {type(err).__name__}: {err}"
    return [(i + 1, dict(row)) for i, row in enumerate(table)], ""


# name -> (splits, hub id, hub config, row parser)
_NAMED = {
    "gsm8k": (("train", "test"), "openai/gsm8k", "main", _parse_gsm8k),
    "math500": (("test",), "HuggingFaceH4/MATH-500", None, _parse_math500),
    "mawps": (("test",), None, None, _parse_mawps),
}


def _load_named(
    name: str, split: str, data_dir: str | None, on_error: str, limit: int | None
) -> tuple[list[Example], DataReport]:
    splits, hub_id, hub_config, parser = _NAMED[name]
    if split not in splits:
        raise FlashmemError(f"dataset {name!r} has no split {split!r}; it has {', '.join(splits)}")
    root = resolve_data_dir(data_dir)
    path = root / name / f"{split}.jsonl" if root is not None else None
    rows, why, label = None, "no hub copy is known for this set", ""
    if path is not None and path.is_file():
        rows, label = _read_jsonl(path), str(path)
    elif hub_id is not None:
        rows, why = _hub_rows(hub_id, hub_config, split)
        label = f"hf://{hub_id}/{split}"
    if rows is None:
        raise FlashmemError(
            f"dataset {name!r} split {split!r} not found. Tried: {_folders_tried(data_dir, path)}; "
            f"the hub: {why}. Put {name}/{split}.jsonl in a folder and pass --data-dir FOLDER or set {ENV_DATA_DIR}."
        )
    report = DataReport(label)
    return _collect(rows, lambda r, ln: parser(r, ln, name), report, on_error, limit), report


def load_examples(
    name_or_path: str,
    split: str = "train",
    data_dir: str | None = None,
    question_field: str | None = None,
    answer_field: str | None = None,
    limit: int | None = None,
    on_error: str = "stop",
) -> tuple[list[Example], DataReport]:
    """Load a named set (gsm8k, math500, mawps), generated recall, a .jsonl file, or a hub id.

    Returns the examples (at most ``limit``) and a report of rows read and skipped. Raises
    FlashmemError for missing data, bad rows (with ``on_error="stop"``) and empty results.
    """
    if on_error not in ON_ERROR:
        raise FlashmemError(f"on_error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise FlashmemError(f"limit must be a positive integer or None, got {limit!r}")
    key = name_or_path.strip().lower()
    if is_recall_spec(key):  # generated, see flashmem.data.recall
        return load_recall(key, split, limit)
    if key in _NAMED:
        return _load_named(key, split, data_dir, on_error, limit)
    path = Path(name_or_path).expanduser()
    if path.is_file():
        rows, label = list(_read_jsonl(path)), str(path)
    elif path.suffix == ".jsonl" or path.exists():
        raise FlashmemError(f"data file {str(path)!r} not found or not a regular file")
    else:
        rows, why = _hub_rows(name_or_path, None, split)
        if rows is None:
            raise FlashmemError(
                f"unknown dataset {name_or_path!r}: not a file, not one of {', '.join(_NAMED)}, "
                f"and {why}"
            )
        label = f"hf://{name_or_path}/{split}"
    parse = _generic_parser(question_field, answer_field, _guess_kind(rows, answer_field), label)
    report = DataReport(label)
    return _collect(rows, parse, report, on_error, limit), report


def split_validation(
    examples: list[Example], n_val: int, seed: int
) -> tuple[list[Example], list[Example]]:
    """Deterministic held-out split of training data; both parts keep the original order."""
    if not 0 < n_val < len(examples):
        raise FlashmemError(
            f"validation size must be between 1 and {len(examples) - 1} "
            f"(dataset has {len(examples)} examples), got {n_val}"
        )
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    held = set(order[:n_val])
    train = [ex for i, ex in enumerate(examples) if i not in held]
    val = [ex for i, ex in enumerate(examples) if i in held]
    return train, val
