"""Stop strings in free decoding (no harness needed): a row that reaches one finishes there, its text up
to the stop string is what it was without the rule, and the other rows of the batch are untouched, with
memory off and with a memory that fires during decoding."""
import pytest
import torch

from flashmem.config import GenerationConfig
from flashmem.decoding.generation import generate
from flashmem.decoding.stopping import StopStrings
from flashmem.memory.registry import build_memory, default_config
from flashmem.models.backbone import Backbone
from flashmem.models.testing import tiny_model, tiny_tokenizer

PROMPTS = ["Hi there", "Question: what is 2+2?\nAnswer:", "abc"]


@pytest.fixture(scope="module")
def bb():
    tokenizer = tiny_tokenizer()
    tokenizer.padding_side = "left"
    return Backbone(tiny_model("llama", vocab_size=len(tokenizer)), tokenizer, name="tiny")


def texts(bb, result) -> list[str]:
    return [bb.tokenizer.decode(t, skip_special_tokens=False) for t in result.tokens]


@pytest.mark.parametrize("with_memory", [False, True])
def test_a_stop_string_ends_only_its_row_and_keeps_the_text_before_it(bb, with_memory):
    torch.manual_seed(0)
    config = default_config("flashmem", trigger="always", budget=2, min_gap=3, num_latents=4)
    memory = build_memory(bb, config) if with_memory else None
    enc = bb.tokenizer(PROMPTS, return_tensors="pt", padding=True, add_special_tokens=False)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    gen = GenerationConfig(max_new_tokens=24)
    free = generate(bb, ids, mask, memory, gen, policy=config if with_memory else None)
    before = texts(bb, free)
    stop = before[1][6:8]  # appears in row 1 after a few tokens
    stopped = generate(bb, ids, mask, memory, gen, policy=config if with_memory else None,
                       stop=StopStrings(bb.tokenizer, [stop], len(PROMPTS)))
    after = texts(bb, stopped)
    assert stop in after[1] and len(stopped.tokens[1]) < len(free.tokens[1])
    assert after[1].split(stop)[0] == before[1].split(stop)[0] and after[1].endswith(stop)
    for row in (0, 2):
        if stop not in before[row]:
            assert stopped.tokens[row] == free.tokens[row]
    if with_memory:
        assert free.traces[1].consolidations, "memory must be made during decoding for this case to mean anything"
        assert all(step < len(stopped.tokens[1]) for step in stopped.traces[1].consolidations)


def test_no_stop_strings_changes_nothing(bb):
    enc = bb.tokenizer(PROMPTS, return_tensors="pt", padding=True, add_special_tokens=False)
    gen = GenerationConfig(max_new_tokens=12)
    plain = generate(bb, enc["input_ids"], enc["attention_mask"], None, gen)
    ruled = generate(bb, enc["input_ids"], enc["attention_mask"], None, gen, stop=StopStrings(bb.tokenizer, [""], 3))
    assert plain.tokens == ruled.tokens
