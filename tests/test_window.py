"""The prompt window (MemoryConfig.prompt_window, `--prompt-window N`): once the prompt-end memory is made, the
prompt is cut from the cache but its attention sinks, and its last N tokens are read again after the memory.
What the rest of the prompt held must then reach the answer only through the memory."""
import pytest
import torch
from test_engine import firing_memory

from flashmem.config import GenerationConfig, MemoryConfig
from flashmem.decoding.generation import generate
from flashmem.errors import FlashmemError
from flashmem.evaluation.report import compare_runs
from flashmem.models.backbone import Backbone
from flashmem.models.testing import tiny_model
from flashmem.training.scoring import find_insertions, score_with_insertions

WINDOW, SINKS, LENGTH, HIDDEN = 3, 4, 16, 8  # HIDDEN: a prompt column the cut removes (after the sinks, before the window)


def prompts(vocab: int):
    """Two prompts per row that differ only in column HIDDEN."""
    ids = torch.randint(3, vocab, (2, LENGTH), generator=torch.Generator().manual_seed(0))
    other = ids.clone()
    other[:, HIDDEN] = 3 + (ids[:, HIDDEN] - 2) % (vocab - 3)
    return ids, other, torch.ones_like(ids)


def memory_of(bb, **overrides):
    """test_engine's context-reading memory, cut at the prompt end and making no memory while decoding."""
    return firing_memory(bb, **{"n_sinks": SINKS, "prompt_window": WINDOW, "trigger_memory": False, **overrides})


def step_logits(bb, ids, mask, memory=None, window=None, keep=False):
    res = generate(bb, ids, mask, memory, GenerationConfig(max_new_tokens=5, prompt_window=window), keep_logits=True)
    return (torch.stack(res.step_logits), res) if keep else torch.stack(res.step_logits)


def reference_logits(model, pieces: list[torch.Tensor], positions: list[int]) -> torch.Tensor:
    """Logits of the sequence of embedding pieces at the given positions, no cache."""
    return model(inputs_embeds=torch.cat(pieces)[None], position_ids=torch.tensor([positions])).logits[0]


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_cut_prompt_is_sinks_memory_then_the_re_read_end(family):
    model = tiny_model(family)
    bb = Backbone(model)
    ids, _, mask = prompts(model.config.vocab_size)
    memory = memory_of(bb)
    logits, res = step_logits(bb, ids, mask, memory, keep=True)
    emb = model.get_input_embeddings()
    k = memory.config.num_latents
    for r in range(2):
        pieces = [emb(ids[r, :SINKS]), res.latents[0][1][r], emb(ids[r, -WINDOW:])]
        positions = [*range(SINKS), *range(LENGTH, LENGTH + k + WINDOW)]
        for step, token in enumerate(res.tokens[r][:-1]):  # each answer token goes on at the next position
            pieces.append(emb(torch.tensor([token])))
            positions.append(positions[-1] + 1)
        full = reference_logits(model, pieces, positions)
        first = SINKS + k + WINDOW - 1  # the re-read prompt end predicts the first answer token
        for step in range(len(res.tokens[r])):
            assert torch.allclose(full[first + step], logits[step, r], atol=1e-4), (r, step)


def test_the_cut_part_reaches_the_answer_only_through_the_memory():
    bb = Backbone(tiny_model("llama"))
    ids, other, mask = prompts(bb.vocab_size)
    # the plain model: the token matters with the whole prompt, not at all after the cut
    assert not torch.allclose(step_logits(bb, ids, mask), step_logits(bb, other, mask))
    assert torch.equal(step_logits(bb, ids, mask, window=WINDOW), step_logits(bb, other, mask, window=WINDOW))
    # the memory read the prompt before the cut, so the token reaches the answer through it
    memory = memory_of(bb)
    assert not torch.allclose(step_logits(bb, ids, mask, memory), step_logits(bb, other, mask, memory), atol=1e-4)
    # memory made during decoding reads the cut cache too: without the prompt-end memory nothing sees the token
    late = memory_of(bb, prompt_memory=False, trigger_memory=True, threshold=0.0, min_gap=1, budget=3)
    a, res = step_logits(bb, ids, mask, late, keep=True)
    assert any(t.consolidations for t in res.traces)
    assert torch.equal(a, step_logits(bb, other, mask, late))


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_training_path_nll_equals_generation_nll_with_the_cut(family):
    bb = Backbone(tiny_model(family))
    g = torch.Generator().manual_seed(5)
    prompt, answer = torch.randint(3, 200, (LENGTH,), generator=g), torch.randint(3, 200, (30,), generator=g)
    memory = memory_of(bb, trigger_memory=True, threshold=2.0, min_gap=3, budget=3)
    res = generate(bb, prompt[None], torch.ones(1, LENGTH, dtype=torch.long), memory, forced=answer[None])
    found = find_insertions(bb, memory, prompt, answer)
    assert found.insertions == res.traces[0].consolidations and found.insertions
    scored = score_with_insertions(bb, memory, prompt, answer, found.insertions)
    assert abs(scored.nll.item() + res.logprobs.sum().item()) < 1e-4
    # the plain model's teacher-forced path takes the same window
    plain = generate(bb, prompt[None], torch.ones(1, LENGTH, dtype=torch.long), forced=answer[None],
                     gen=GenerationConfig(prompt_window=WINDOW))
    assert abs(find_insertions(bb, None, prompt, answer, window=WINDOW).nll.item() + plain.logprobs.sum().item()) < 1e-4


def test_window_errors_name_the_problem():
    bb = Backbone(tiny_model("llama"))
    ids, _, mask = prompts(bb.vocab_size)
    with pytest.raises(FlashmemError, match="prompt window 13 needs prompts of more than 13 tokens"):
        generate(bb, ids, mask, gen=GenerationConfig(prompt_window=LENGTH - SINKS + 1))
    with pytest.raises(FlashmemError, match="not MemGen's weaver"):
        MemoryConfig(method="memgen", prompt_window=4)
    with pytest.raises(FlashmemError, match="prompt_window must be >= 0"):
        MemoryConfig(prompt_window=-1)


def test_train_saves_the_window_and_eval_runs_it_for_the_memory_and_the_plain_model(tmp_path, capsys):
    import json

    from tiny_assets import arithmetic_rows, make_tiny_model_dir, write_jsonl

    from flashmem.cli import main
    from flashmem.evaluation.records import read_records

    model = str(make_tiny_model_dir(tmp_path / "model"))
    data = str(write_jsonl(tmp_path / "q.jsonl", arithmetic_rows(8)))
    mem = tmp_path / "mem"
    assert main(["train", "--model", model, "--data", data, "--out", str(mem), "--batch-size", "2", "--steps", "2",
                 "--val-size", "2", "--eval-every", "0", "--prompt-window", "2"]) == 0
    assert json.loads((mem / "memory_config.json").read_text())["prompt_window"] == 2

    def run(name, *extra):
        out = tmp_path / f"{name}.json"
        assert main(["eval", "--model", model, "--data", data, "--limit", "3", "--batch-size", "2",
                     "--max-new-tokens", "4", "--out", str(out), *extra]) == 0
        header, records = read_records(out.with_suffix(".records.jsonl"))
        return header["identity"], records

    identity, _ = run("flashmem", "--method", "flashmem", "--memory", str(mem))
    assert identity["memory_config"]["prompt_window"] == 2  # the memory's own window, recorded
    identity, _ = run("flashmem_whole", "--method", "flashmem", "--memory", str(mem), "--prompt-window", "0")
    assert "prompt_window" not in identity["memory_config"]  # off, so records from before the option resume
    assert "prompt window 0 (the memory was trained with 2)" in capsys.readouterr().err
    cut, whole = run("plain_cut", "--method", "vanilla", "--prompt-window", "2"), run("plain", "--method", "vanilla")
    assert cut[0]["prompt_window"] == 2 and "prompt_window" not in whole[0]
    assert [r["nll"] for r in cut[1]] != [r["nll"] for r in whole[1]]  # the cut reached the scored NLL too
    labels = [run["label"] for run in compare_runs([tmp_path / f"{n}.json" for n in ("plain", "plain_cut", "flashmem")])["runs"]]
    assert labels == ["vanilla", "vanilla, prompt cut, last 2 kept", "flashmem (mem), prompt cut, last 2 kept"]


def with_question_changed(ids: torch.Tensor, vocab: int) -> torch.Tensor:
    """The same prompts with one token inside the window (the question) changed."""
    other = ids.clone()
    other[:, -2] = 3 + (ids[:, -2] - 2) % (vocab - 3)
    return other


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_query_agnostic_memory_is_made_before_the_window_and_never_reads_it(family):
    model = tiny_model(family)
    bb = Backbone(model)
    ids, _, mask = prompts(model.config.vocab_size)
    memory = memory_of(bb, query_agnostic=True)
    logits, res = step_logits(bb, ids, mask, memory, keep=True)
    # the latents are what the memory makes from the prompt without its window, read on its own
    from flashmem.decoding.engine import memory_context, prefill
    alone, _ = prefill(bb, ids[:, :-WINDOW], mask[:, :-WINDOW], SINKS)
    with torch.no_grad():
        assert torch.allclose(res.latents[0][1], memory(memory_context(bb, alone)), atol=1e-5)
    # a different question: the same latents, a different answer
    _, changed = step_logits(bb, with_question_changed(ids, bb.vocab_size), mask, memory, keep=True)
    assert torch.allclose(res.latents[0][1], changed.latents[0][1], atol=1e-6)
    aware, _ = step_logits(bb, ids, mask, memory_of(bb), keep=True)  # made after the question: it differs
    assert not torch.allclose(logits[0], aware[0], atol=1e-4)
    # after the memory the sequence is the same as the query-aware cut's: sinks, latents, window, answer
    emb, k = model.get_input_embeddings(), memory.config.num_latents
    for r in range(2):
        pieces = [emb(ids[r, :SINKS]), res.latents[0][1][r], emb(ids[r, -WINDOW:])]
        positions = [*range(SINKS), *range(LENGTH - WINDOW, LENGTH - WINDOW + k + WINDOW)]
        for token in res.tokens[r][:-1]:
            pieces.append(emb(torch.tensor([token])))
            positions.append(positions[-1] + 1)
        full = reference_logits(model, pieces, positions)
        for step in range(len(res.tokens[r])):
            assert torch.allclose(full[SINKS + k + WINDOW - 1 + step], logits[step, r], atol=1e-4), (r, step)


def test_query_agnostic_training_path_nll_equals_generation_nll():
    bb = Backbone(tiny_model("llama"))
    g = torch.Generator().manual_seed(7)
    prompt, answer = torch.randint(3, 200, (LENGTH,), generator=g), torch.randint(3, 200, (12,), generator=g)
    memory = memory_of(bb, query_agnostic=True)
    res = generate(bb, prompt[None], torch.ones(1, LENGTH, dtype=torch.long), memory, forced=answer[None])
    scored = score_with_insertions(bb, memory, prompt, answer, [])
    assert abs(scored.nll.item() + res.logprobs.sum().item()) < 1e-4


def test_query_agnostic_needs_a_window():
    with pytest.raises(FlashmemError, match="query_agnostic needs prompt_window > 0"):
        MemoryConfig(query_agnostic=True)
