"""The context ablations: foreign-context latents are exactly the memory's latents for the foreign
questions; mean-latents emit the per-index mean of the memory's own latents; both run through
`flashmem eval` (generation and --nll-only) and are recorded in the result's identity."""
import json

import pytest
import torch
from safetensors.torch import load_file
from tiny_assets import arithmetic_rows, make_tiny_model_dir, write_jsonl

from flashmem.api import FlashMem
from flashmem.cli import main
from flashmem.data.datasets import load_examples
from flashmem.data.prompts import encode_prompts
from flashmem.decoding.engine import memory_context, prefill
from flashmem.errors import FlashmemError
from flashmem.evaluation.ablations import foreign_context, foreign_examples, mean_latents
from flashmem.memory.registry import build_memory, default_config, save_memory
from flashmem.models.loader import load_backbone


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("abl")
    model_dir = make_tiny_model_dir(root / "model")
    data = write_jsonl(root / "data.jsonl", arithmetic_rows(6))
    bb = load_backbone(str(model_dir))
    torch.manual_seed(0)
    memory = build_memory(bb, default_config("flashmem", num_latents=3, threshold=0.0, min_gap=3, budget=2))
    with torch.no_grad():
        for p in memory.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # trained-looking: the latents read the context
    save_memory(memory, root / "mem")
    examples, _ = load_examples(str(data))
    return model_dir, data, bb, memory, examples, root


def test_foreign_latents_are_the_foreign_questions_own(setup):
    _, _, bb, memory, examples, _ = setup
    foreign = foreign_examples(examples)
    assert [foreign[ex.line].line for ex in examples] == [2, 3, 4, 5, 6, 1]  # a derangement: nobody is their own
    batch = examples[:3]
    wrapped = foreign_context(bb, memory, [foreign[ex.line].question for ex in batch], None)
    ids, mask = encode_prompts(bb.tokenizer, [ex.question for ex in batch])
    state, _ = prefill(bb, ids, mask, 4)
    own = memory_context(bb, state)
    fids, fmask = encode_prompts(bb.tokenizer, [foreign[ex.line].question for ex in batch])
    fstate, _ = prefill(bb, fids, fmask, 4)
    with torch.no_grad():
        torch.testing.assert_close(wrapped(own), memory(memory_context(bb, fstate)))
        assert not torch.allclose(wrapped(own), memory(own), atol=1e-4)
        rows = torch.tensor([0, 2])  # only some rows fire: the same foreign rows are read
        torch.testing.assert_close(wrapped(own.select(rows)), memory(memory_context(bb, fstate).select(rows)))
    with pytest.raises(FlashmemError, match="two questions"):
        foreign_examples(examples[:1])


def test_query_agnostic_foreign_latents_are_made_before_the_foreign_question(setup):
    """For a memory made before the question window, another question's latents are made at the same point of
    that question's prompt, so the ablation swaps documents, not questions the memory never sees."""
    from dataclasses import replace

    _, _, bb, memory, examples, _ = setup
    policy = replace(memory.config, prompt_window=3, query_agnostic=True)
    questions = [ex.question for ex in examples[1:3]]
    wrapped = foreign_context(bb, memory, questions, None, policy)
    ids, mask = encode_prompts(bb.tokenizer, questions)
    alone, _ = prefill(bb, ids[:, :-3], mask[:, :-3], 4)  # the foreign prompts without their window
    with torch.no_grad():
        torch.testing.assert_close(wrapped(memory_context(bb, alone)), memory(memory_context(bb, alone)), atol=1e-5,
                                   rtol=1e-4)


def test_mean_latents_are_the_per_index_means_on_the_embedding_scale(setup, tmp_path):
    _, _, bb, memory, examples, _ = setup
    fm = FlashMem(bb, memory)
    pairs = []
    for ex in examples[:4]:
        ids, _ = fm.encode([ex.question])
        answer = torch.tensor(bb.tokenizer(ex.answer, add_special_tokens=False).input_ids + [2])
        pairs.append((ids[0], answer))
    ablated = mean_latents(bb, memory, memory.config, pairs, tmp_path / "m.safetensors")
    saved = load_file(str(tmp_path / "m.safetensors"))
    assert saved["counts"][0] == 4 and saved["means"].shape[1:] == (3, bb.hidden_size)
    # Index 0 is the prompt end: the mean of the four prompt-end latents, rescaled.
    with torch.no_grad():
        firsts = []
        for prompt, _ in pairs:
            state, _ = prefill(bb, prompt[None], torch.ones_like(prompt[None]), 4)
            firsts.append(memory(memory_context(bb, state))[0])
        expected = memory.to_embedding_scale(torch.stack(firsts).mean(0))
    torch.testing.assert_close(saved["means"][0], expected, atol=1e-5, rtol=1e-5)
    ctx = memory_context(bb, state)
    beyond = saved["means"].shape[0] + 3
    ctx.index = torch.tensor([0])
    torch.testing.assert_close(ablated(ctx)[0], saved["means"][0])
    ctx.index = torch.tensor([beyond])  # more consolidations than were ever seen: the last mean
    torch.testing.assert_close(ablated(ctx)[0], saved["means"][-1])
    again = mean_latents(bb, memory, memory.config, [], tmp_path / "m.safetensors")  # read back, not recomputed
    assert torch.equal(again.means.cpu(), saved["means"])


@pytest.mark.parametrize("ablate", ["foreign-context", "mean-latents"])
def test_eval_runs_each_ablation_and_records_it(setup, ablate, capsys):
    model_dir, data, _, _, _, root = setup
    base = ["eval", "--model", str(model_dir), "--method", "flashmem", "--memory", str(root / "mem"),
            "--data", str(data), "--limit", "4", "--batch-size", "2", "--max-new-tokens", "6"]
    plain, ablated = root / f"plain_{ablate}.json", root / f"{ablate}.json"
    assert main(base + ["--out", str(plain)]) == 0
    assert main(base + ["--ablate", ablate, "--out", str(ablated), "--compare", str(plain)]) == 0
    summary = json.loads(ablated.read_text())
    assert summary["settings"]["ablate"] == ablate and summary["n"] == 4
    assert summary["settings"]["config"]["ablate"] == ablate
    nll_a, nll_p = summary["nll_per_token"], json.loads(plain.read_text())["nll_per_token"]
    assert nll_a != pytest.approx(nll_p, abs=1e-6)  # the ablation changed what the memory emits
    assert main(base + ["--ablate", ablate, "--nll-only", "--out", str(root / f"nll_{ablate}.json")]) == 0
    nll_only = json.loads((root / f"nll_{ablate}.json").read_text())
    assert nll_only["nll_per_token"] == pytest.approx(nll_a, abs=1e-5)
    if ablate == "mean-latents":
        assert ablated.with_suffix(".mean_latents.safetensors").is_file()
    capsys.readouterr()
    assert main(["eval", "--model", str(model_dir), "--method", "softprompt", "--untrained", "--data", str(data),
                 "--ablate", ablate, "--out", str(root / "x.json")]) == 2
    assert "reads its context" in capsys.readouterr().err
