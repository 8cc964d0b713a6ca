"""Tests for flashmem.data.recall (the generated key-value recall set) and the "exact" answer kind."""

import re

import pytest

from flashmem.data import recall
from flashmem.data.answers import KINDS, extract_first_number, is_correct, reference_final
from flashmem.data.datasets import load_examples
from flashmem.data.recall import (
    FACT_CHARS_PER_TOKEN,
    FILLER_CHARS_PER_TOKEN,
    SPLIT_SIZES,
    RecallSpec,
    iter_items,
    make_item,
    parse_spec,
    spec_string,
)
from flashmem.errors import FlashmemError

FACT_RE = re.compile(r"The ([a-z ]+?) of the ([a-z]+) ([a-z]+) is (\d+)\.")
QUESTION_RE = re.compile(r"\n\nQuestion: What is the ([a-z ]+?) of the ([a-z]+) ([a-z]+)\? "
                         r"Answer with the number only\.$")
SMALL = RecallSpec(context=512, facts=8)


def split_item(ex):
    """(document, facts found in it, (attribute, colour, object) asked)."""
    document, _, _ = ex.question.rpartition("\n\nQuestion:")
    asked = QUESTION_RE.search(ex.question)
    assert asked is not None, ex.question[-200:]
    return document, FACT_RE.findall(document), asked.groups()


def needle_offset(ex) -> float:
    """Where the needle sentence starts, as a fraction of the document's characters."""
    document, _, _ = split_item(ex)
    return document.index(ex.answer) / len(document)


# ---- determinism and splits ---------------------------------------------------------------------
def test_items_are_deterministic_and_independent_of_limit():
    first = list(iter_items(SMALL, "train", 3))
    again = list(iter_items(SMALL, "train", 6))
    assert first == again[:3]
    assert make_item(SMALL, "train", 4) == again[4]
    assert [ex.line for ex in again] == [1, 2, 3, 4, 5, 6]


def test_seed_changes_the_items():
    other = RecallSpec(context=512, facts=8, seed=1)
    assert make_item(SMALL, "test", 0).question != make_item(other, "test", 0).question


def test_splits_are_disjoint():
    texts = {split: {ex.question for ex in iter_items(SMALL, split, 40)} for split in SPLIT_SIZES}
    assert all(len(t) == 40 for t in texts.values())
    assert not texts["train"] & texts["validation"]
    assert not texts["train"] & texts["test"]
    assert not texts["validation"] & texts["test"]
    # The same index in two splits draws other facts, not just other filler.
    answers = [make_item(SMALL, split, 0).answer for split in SPLIT_SIZES]
    assert len(set(answers)) == 3


def test_split_sizes_and_bad_split():
    assert SPLIT_SIZES == {"train": 4000, "validation": 500, "test": 1000}
    assert len(list(iter_items(RecallSpec(context=128, facts=2), "validation"))) == 500
    with pytest.raises(FlashmemError, match="no split 'dev'"):
        make_item(SMALL, "dev", 0)
    with pytest.raises(FlashmemError, match="0..499"):
        make_item(SMALL, "validation", 500)


def test_facts_stay_the_same_across_context_lengths():
    short, long = RecallSpec(context=512, facts=8), RecallSpec(context=2048, facts=8)
    for i in range(5):
        a, b = make_item(short, "validation", i), make_item(long, "validation", i)
        assert (a.answer, a.final) == (b.answer, b.final)
        assert sorted(split_item(a)[1]) == sorted(split_item(b)[1])


# ---- content --------------------------------------------------------------------------------------
@pytest.mark.parametrize("index", range(12))
def test_needle_once_question_asks_it_and_keys_distinct(index):
    spec = RecallSpec(context=1024, facts=12)
    ex = make_item(spec, "train", index)
    document, facts, asked = split_item(ex)
    assert len(facts) == 12
    assert len({(colour, obj) for _, colour, obj, _ in facts}) == 12  # distinct keys
    assert len({value for *_, value in facts}) == 12  # distinct values
    assert all(re.fullmatch(r"[1-9]\d{3}", value) for *_, value in facts)
    assert document.count(ex.answer) == 1
    assert document.count(ex.final) == 1  # the value appears nowhere else
    assert (*asked, ex.final) in facts
    assert ex.answer == "The {} of the {} {} is {}.".format(*asked, ex.final)
    assert (ex.kind, ex.source, ex.line) == ("exact", spec_string(spec), index + 1)


def test_filler_holds_no_digits_and_no_key_words():
    ex = make_item(RecallSpec(context=2048, facts=4), "test", 0)
    document = FACT_RE.sub("", split_item(ex)[0])
    assert not re.search(r"\d", document)
    key_words = {w for text in recall.COLOURS + recall.OBJECTS + recall.ATTRIBUTES for w in text.split()}
    assert not recall.filler_vocabulary() & key_words


def test_filler_is_varied():
    document = split_item(make_item(RecallSpec(context=2048, facts=4), "test", 1))[0]
    sentences = re.split(r"(?<=\.) |\n\n", document)
    assert len(set(sentences)) > 0.8 * len(sentences)


# ---- needle position ------------------------------------------------------------------------------
def test_needle_at_start_and_end():
    for i in range(8):
        start = make_item(RecallSpec(context=512, facts=8, needle="start"), "validation", i)
        assert split_item(start)[0].startswith(start.answer)
        end = make_item(RecallSpec(context=512, facts=8, needle="end"), "validation", i)
        assert split_item(end)[0].endswith(end.answer)


@pytest.mark.parametrize("needle", [0.25, "middle", 0.8])
def test_needle_fraction(needle):
    target = recall.NEEDLE_WORDS.get(needle, needle)
    spec = RecallSpec(context=2048, facts=8, needle=needle)
    for i in range(6):
        assert abs(needle_offset(make_item(spec, "train", i)) - target) < 0.05


def test_needle_any_spreads_over_the_document():
    spec = RecallSpec(context=512, facts=4, needle="any")
    offsets = [needle_offset(ex) for ex in iter_items(spec, "train", 60)]
    thirds = [sum(lo <= o < lo + 1 / 3 for o in offsets) for lo in (0, 1 / 3, 2 / 3)]
    assert min(thirds) >= 10, thirds


# ---- length ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("context,facts", [(128, 2), (512, 8), (1024, 16), (4096, 32), (8192, 8)])
def test_length_near_context(context, facts):
    """Tokens estimated with the measured ratios (SmolLM2: filler 4.75, facts 3.2 chars/token)."""
    for i in range(3):
        ex = make_item(RecallSpec(context=context, facts=facts), "test", i)
        fact_text = FACT_RE.findall(ex.question)
        dense = len(ex.question) - len(FACT_RE.sub("", ex.question))
        dense += len(ex.question) - len(ex.question.rpartition("\n\nQuestion:")[0])
        assert len(fact_text) == facts
        estimate = (len(ex.question) - dense) / FILLER_CHARS_PER_TOKEN + dense / FACT_CHARS_PER_TOKEN
        assert abs(estimate - context) < max(0.05 * context, 20), (estimate, context)


def test_longer_context_is_longer_text():
    lengths = [len(make_item(RecallSpec(context=c, facts=8), "test", 0).question) for c in (512, 1024, 2048)]
    assert 1.8 < lengths[1] / lengths[0] < 2.2 and 1.8 < lengths[2] / lengths[1] < 2.2


# ---- spec strings ---------------------------------------------------------------------------------
def test_parse_defaults_and_canonical_round_trip():
    assert parse_spec("recall") == RecallSpec()
    spec = parse_spec(" Recall:context=1024, facts=4,needle=0.5,seed=3 ")
    assert spec == RecallSpec(context=1024, facts=4, needle=0.5, seed=3)
    assert spec_string(spec) == "recall:context=1024,facts=4,needle=0.5,seed=3"
    assert parse_spec(spec_string(spec)) == spec
    assert spec_string(parse_spec("recall:needle=end")).startswith(f"recall:context={RecallSpec().context},")
    assert parse_spec("recall:needle=1") == RecallSpec(needle=1.0)


@pytest.mark.parametrize("text,message", [
    ("recall:size=3", "unknown key 'size'"),
    ("recall:context=big", "context must be an integer, got 'big'"),
    ("recall:context=64", "context must be an integer in 128..32768, got 64"),
    ("recall:context=40000", "got 40000"),
    ("recall:facts=0", "facts must be an integer >= 1, got 0"),
    ("recall:context=256,facts=9", "facts=9 does not fit context=256: at most 8"),
    ("recall:needle=1.5", "needle must be .* got 1.5"),
    ("recall:needle=top", "needle must be .* got 'top'"),
    ("recall:seed=0.5", "seed must be an integer, got '0.5'"),
    ("recall:facts", "expected key=value, got 'facts'"),
    ("recall:facts=4,facts=5", "facts given twice"),
    ("recalls", "not a recall spec"),
])
def test_parse_errors(text, message):
    with pytest.raises(FlashmemError, match=message):
        parse_spec(text)


def test_spec_validation_names_the_value():
    with pytest.raises(FlashmemError, match="got True"):
        RecallSpec(seed=True)
    with pytest.raises(FlashmemError, match="got -0.1"):
        RecallSpec(needle=-0.1)


# ---- loading through flashmem.data.datasets -----------------------------------------------------------------
def test_load_examples_hook():
    examples, report = load_examples("recall:context=256,facts=4", "validation", limit=5)
    assert len(examples) == 5 and report.kept == 5
    assert report.path == "recall:context=256,facts=4,needle=any,seed=0"
    assert examples == list(iter_items(RecallSpec(context=256, facts=4), "validation", 5))
    assert all(is_correct(ex.answer, ex.final, ex.kind) for ex in examples)
    assert all(reference_final(ex.answer, ex.kind) == ex.final for ex in examples)
    with pytest.raises(FlashmemError, match="unknown key"):
        load_examples("recall:contxt=256", "test")


# ---- exact-match scoring --------------------------------------------------------------------------
@pytest.mark.parametrize("prediction,correct", [
    ("4821", True),
    ("The access code of the blue locker is 4821.", True),
    (" 4,821", True),
    ("4821\nThe code of the red safe is 1234.", True),
    ("1234, 4821", False),  # a listed code earlier than the right one
    ("The codes are 1234 and 4821.", False),
    ("48210", False),
    ("04821", False),
    ("4821.5", False),
    ("482", False),
    ("I do not know.", False),
    ("", False),
    (None, False),
])
def test_exact_scoring(prediction, correct):
    assert "exact" in KINDS
    assert is_correct(prediction, "4821", "exact") is correct


def test_exact_reference_and_extraction():
    assert reference_final("The room number of the red van is 1050.", "exact") == "1050"
    assert reference_final(4821, "exact") == "4821"
    assert extract_first_number("code 4,8215 and 7") == "4"
    with pytest.raises(FlashmemError, match="no number"):
        reference_final("no digits here", "exact")
