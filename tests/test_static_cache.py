"""A preallocated cache (GenerationConfig.static_cache, transformers' StaticCache): every decoding path gives
the same tokens, consolidations and entropies as the growing cache."""
import pytest
import torch
from test_engine import firing_memory

from flashmem.config import GenerationConfig
from flashmem.decoding.generation import generate
from flashmem.models.backbone import Backbone
from flashmem.models.testing import tiny_model


def prompts(vocab: int, rows: int = 2, length: int = 14, pad: int = 3):
    ids = torch.randint(3, vocab, (rows, length), generator=torch.Generator().manual_seed(4))
    mask = torch.ones_like(ids)
    mask[0, :pad] = 0  # row 0 left-padded
    return ids, mask


def both(bb, ids, mask, memory=None, forced=None, **gen):
    out = []
    for static in (False, True):
        res = generate(bb, ids, mask, memory, GenerationConfig(max_new_tokens=10, static_cache=static, **gen),
                       forced=forced)
        out.append(res)
    return out


def same(growing, static, tol=1e-4):
    assert growing.tokens == static.tokens
    for a, b in zip(growing.traces, static.traces):
        assert a.consolidations == b.consolidations
        assert len(a.entropy) == len(b.entropy) and all(abs(x - y) < tol for x, y in zip(a.entropy, b.entropy))


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "mistral"])
def test_plain_decoding_is_the_same(family):
    bb = Backbone(tiny_model(family))
    ids, mask = prompts(bb.vocab_size)
    same(*both(bb, ids, mask))


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_flashmem_with_consolidations_is_the_same(family):
    bb = Backbone(tiny_model(family))
    ids, mask = prompts(bb.vocab_size)
    growing, static = both(bb, ids, mask, firing_memory(bb))
    assert any(t.consolidations for t in growing.traces)  # the memory fired during decoding
    same(growing, static)


def test_the_cut_query_agnostic_memory_and_forced_answers_are_the_same():
    bb = Backbone(tiny_model("llama"))
    ids, mask = prompts(bb.vocab_size)
    memory = firing_memory(bb, n_sinks=4, prompt_window=3, query_agnostic=True)
    forced = torch.randint(3, 200, (2, 8), generator=torch.Generator().manual_seed(5))
    growing, static = both(bb, ids, mask, memory, forced=forced)
    same(growing, static)
    assert torch.allclose(growing.logprobs, static.logprobs, atol=1e-4)


class StopAfter:
    """Stops each original row after its own number of tokens (a stand-in for stop strings)."""

    def __init__(self, counts: list[int]):
        self.counts, self.seen = counts, [0] * len(counts)

    def update(self, origin: list[int], tokens: list[int]) -> list[bool]:
        hits = []
        for row in origin:
            self.seen[row] += 1
            hits.append(self.seen[row] == self.counts[row])
        return hits


def test_finished_rows_leave_a_static_batch():
    bb = Backbone(tiny_model("qwen2"))
    ids, mask = prompts(bb.vocab_size, rows=3)
    memory = firing_memory(bb)
    runs = [generate(bb, ids, mask, memory, GenerationConfig(max_new_tokens=10, static_cache=static),
                     stop=StopAfter([3, 10, 6])) for static in (False, True)]
    assert [len(t) for t in runs[0].tokens] == [3, 10, 6]  # rows left the batch at different steps
    same(*runs)
