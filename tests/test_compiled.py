"""The compiled decoding step (GenerationConfig.compile): token for token the eager path's output, the
same consolidation steps and the monitor's entropy within 1e-3, for plain decoding, FlashMem with
consolidations (and the cut) and MemGen with its re-prefill; one graph, compiled once and reused."""
import pytest
import torch
import torch._dynamo
from test_engine import firing_memory
from test_memgen import COMMA, PERIOD, VOCAB, backbone, padded_batch, weaver
from test_static_cache import prompts

from flashmem.config import GenerationConfig
from flashmem.decoding.compiled import SLOT_BUCKET, bucketed
from flashmem.decoding.generation import generate
from flashmem.models.backbone import Backbone
from flashmem.models.testing import tiny_model


def eager_and_compiled(bb, ids, mask, memory=None, tokens=10, **kw):
    gen = dict(max_new_tokens=tokens, compact=False)
    eager = generate(bb, ids, mask, memory, GenerationConfig(**gen), **kw)
    compiled = generate(bb, ids, mask, memory, GenerationConfig(compile=True, **gen), **kw)
    return eager, compiled


def same(eager, compiled, tol=1e-3):
    assert eager.tokens == compiled.tokens
    for a, b in zip(eager.traces, compiled.traces):
        assert a.consolidations == b.consolidations
        assert len(a.entropy) == len(b.entropy) and max(abs(x - y) for x, y in zip(a.entropy, b.entropy)) < tol


def graph_breaks() -> int:
    return sum(torch._dynamo.utils.counters["graph_break"].values())


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_plain_decoding_is_the_same_in_one_graph(family):
    bb = Backbone(tiny_model(family))
    ids, mask = prompts(bb.vocab_size)
    torch._dynamo.utils.counters.clear()
    same(*eager_and_compiled(bb, ids, mask))
    assert graph_breaks() == 0  # fullgraph=True would raise anyway; this names the cause if that changes
    frames = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    again = generate(bb, *prompts(bb.vocab_size, length=20), None, GenerationConfig(max_new_tokens=6, compile=True,
                                                                                     compact=False))
    assert len(again.tokens) == 2
    # Another prompt length in the same slot bucket and batch size reuses the graph.
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == frames


def test_flashmem_with_consolidations_is_the_same():
    bb = Backbone(tiny_model("llama"))
    ids, mask = prompts(bb.vocab_size)
    eager, compiled = eager_and_compiled(bb, ids, mask, firing_memory(bb))
    assert any(len(t.consolidations) >= 2 for t in eager.traces)  # the step resumes after eager insertions
    same(eager, compiled)


def test_consolidations_run_as_their_own_graph(monkeypatch):
    """A consolidation for some rows only (the others' slots masked) through the second graph gives the eager
    path's tokens and steps; the eager consolidate is never called, and the graph is compiled once."""
    from flashmem.decoding import compiled as compiled_module
    from flashmem.decoding import generation

    bb = Backbone(tiny_model("llama"))
    ids, mask = prompts(bb.vocab_size)
    memory = firing_memory(bb, threshold=None, trigger="always", min_gap=3, budget=2)
    forced = torch.randint(3, 200, (2, 9), generator=torch.Generator().manual_seed(3))
    eager = generate(bb, ids, mask, memory, GenerationConfig(max_new_tokens=9, compact=False), forced=forced)
    calls = []
    monkeypatch.setattr(generation, "consolidate", lambda *a, **k: calls.append(1))
    injected = []
    real = compiled_module.CompiledStep.consolidate
    monkeypatch.setattr(compiled_module.CompiledStep, "consolidate",
                        lambda self, *a: injected.append(a[3]) or real(self, *a))
    torch._dynamo.utils.counters.clear()
    compiled = generate(bb, ids, mask, memory, GenerationConfig(max_new_tokens=9, compact=False, compile=True),
                        forced=forced)
    assert [t.consolidations for t in eager.traces] == [[2, 5], [2, 5]] and calls == []
    assert len(injected) == 2
    same(eager, compiled)
    assert torch.allclose(eager.logprobs, compiled.logprobs, atol=1e-4)
    assert graph_breaks() == 0


def test_a_consolidation_for_one_row_of_two_is_the_same():
    bb = Backbone(tiny_model("qwen3"))
    ids, mask = prompts(bb.vocab_size)
    eager, compiled = eager_and_compiled(bb, ids, mask, firing_memory(bb, threshold=2.3), tokens=12)
    fired = [t.consolidations for t in eager.traces]
    assert any(set(a) != set(b) for a, b in zip(fired, fired[1:]))  # some consolidation for one row alone
    same(eager, compiled)


def test_the_cut_and_forced_answers_are_the_same():
    bb = Backbone(tiny_model("llama"))
    ids, mask = prompts(bb.vocab_size)
    memory = firing_memory(bb, n_sinks=4, prompt_window=3, query_agnostic=True)
    forced = torch.randint(3, 200, (2, 8), generator=torch.Generator().manual_seed(5))
    eager, compiled = eager_and_compiled(bb, ids, mask, memory, forced=forced)
    same(eager, compiled)
    assert torch.allclose(eager.logprobs, compiled.logprobs, atol=1e-4)


def test_memgen_with_its_reprefill_is_the_same():
    bb = backbone()
    memory = weaver(bb, reprefill=True)
    ids, mask = padded_batch()
    forced = torch.randint(13, VOCAB, (3, 8), generator=torch.Generator().manual_seed(1))
    forced[0, [1, 4]] = COMMA  # delimiters: MemGen inserts after them, then re-encodes the whole cache
    forced[2, 2] = PERIOD
    eager, compiled = eager_and_compiled(bb, ids, mask, memory, forced=forced)
    assert [t.consolidations for t in eager.traces] == [[1, 4], [], [2]]
    same(eager, compiled)
    assert torch.allclose(eager.logprobs, compiled.logprobs, atol=1e-4)


def test_cache_sizes_are_bucketed():
    assert bucketed(1) == SLOT_BUCKET and bucketed(SLOT_BUCKET) == SLOT_BUCKET
    assert bucketed(SLOT_BUCKET + 1) == 2 * SLOT_BUCKET


def test_bench_runs_the_compiled_path_and_says_so(tmp_path):
    import json

    from flashmem.cli import main
    from flashmem.models.testing import make_tiny_model_dir

    model = make_tiny_model_dir(tmp_path / "model")
    out = tmp_path / "bench.json"
    assert main(["bench", "--model", str(model), "--contexts", "24", "--new-tokens", "40", "--repeats", "1",
                 "--schedules", "paper", "--methods", "vanilla,flashmem,transformers", "--no-memory-workers", "--compile",
                 "--data-dir", str(tmp_path / "no-data"), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["settings"]["decode_path"].startswith("compiled step")
    flashmem = [r for r in report["results"] if r["method"] == "flashmem"]
    assert flashmem and all(r["consolidations"] == 1 and r["prompt_memory"] for r in flashmem)
    peer = [r for r in report["results"] if r["method"] == "transformers"]
    assert peer and peer[0]["tokens_per_s"] > 0 and peer[0]["consolidations"] == 0
    assert {r["pair"] for r in report["ratios"]} == {"flashmem/vanilla", "flashmem/transformers", "vanilla/transformers"}


@pytest.mark.parametrize("compiled", [False, True])
def test_the_peer_decodes_the_same_greedy_tokens(compiled):
    """transformers' generate (the bench's peer) and flashmem's plain decoding do the same work."""
    bb = Backbone(tiny_model("llama"))
    ids, mask = prompts(bb.vocab_size, rows=1, pad=0)
    ours = generate(bb, ids, mask, None, GenerationConfig(max_new_tokens=12, compile=compiled)).tokens[0]
    calls = []
    theirs = bb.library_generate(ids, mask, 12, compiled, lambda: calls.append(1))[0].tolist()
    assert calls == [1] and len(theirs) == 12
    assert theirs[: len(ours)] == ours  # ours ends early only at EOS, which the peer is told to skip
