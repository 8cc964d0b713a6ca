"""The gist objective (training/objectives.py, --gist-weight): latent j's head distribution named toward token j
of a recall document's gist. Checked against a recomputation without the engine, on tiny models."""
import json

import pytest
import torch
from test_engine import firing_memory
from tiny_assets import make_tiny_model_dir

from flashmem.cli import main
from flashmem.data.recall import Document, Fact, RecallStream, gist_text, parse_spec
from flashmem.decoding.engine import memory_context, prefill
from flashmem.errors import FlashmemError
from flashmem.models.backbone import Backbone
from flashmem.models.testing import tiny_model, tiny_tokenizer
from flashmem.training.batching import LazySequences
from flashmem.training.objectives import Objective, gist_nll, sequence_loss

SINKS, WINDOW, LENGTH = 4, 3, 16


def soft_memory(bb, **overrides):
    return firing_memory(bb, n_sinks=SINKS, prompt_window=WINDOW, trigger_memory=False, readout="soft-token",
                         **overrides)


def test_the_gist_lists_every_fact_in_document_order():
    late, early = Fact("access code", "blue", "locker", "4821"), Fact("room number", "red", "safe", "1234")
    doc = Document(f"Some text. {early.sentence()} More text. {late.sentence()}", [late, early])  # needle first
    assert gist_text(doc) == "red safe 1234; blue locker 4821"
    assert gist_text(doc, "facts") == f"{early.sentence()} {late.sentence()}"
    with pytest.raises(FlashmemError, match="gist form must be one of pairs, facts, got 'keys'"):
        gist_text(doc, "keys")


def test_a_stream_with_a_gist_gives_every_example_its_documents_gist_as_ids():
    spec = parse_spec("recall:context=128,facts=2")
    stream = RecallStream(spec, questions_per_document=2, gist="pairs")
    first, second = stream[0], stream[1]
    assert first.gist == second.gist == gist_text(stream.document(0)) and first.final in first.gist
    assert RecallStream(spec).__getitem__(0).gist == ""  # off unless asked for
    tok = tiny_tokenizer()
    seqs = LazySequences(tok, stream, 2048, "recall", per_document=2)
    assert seqs[0].gist.tolist() == tok(" " + first.gist, add_special_tokens=False).input_ids  # as in the document
    assert seqs[1].reconstruct is False  # the document's own terms are scored once a document
    assert LazySequences(tok, RecallStream(spec), 2048, "recall")[0].gist is None


@pytest.mark.parametrize("agnostic", [False, True])
def test_gist_nll_is_the_cross_entropy_of_each_latents_head_distribution(agnostic):
    bb = Backbone(tiny_model("qwen3"))
    memory = soft_memory(bb, query_agnostic=agnostic, num_latents=4)
    g = torch.Generator().manual_seed(5)
    prompt = torch.randint(3, bb.vocab_size, (LENGTH,), generator=g)
    gist = torch.randint(3, bb.vocab_size, (6,), generator=g)  # longer than K: the first K are named
    from flashmem.training.scoring import encode_prompt
    nll, weight, n, hits = gist_nll(memory, gist, memory.config, encode_prompt(bb, memory.config, prompt))
    # recomputed: the memory made from a prefill of what it may see, each step's output through the head
    seen = prompt[:LENGTH - WINDOW] if agnostic else prompt
    state, _ = prefill(bb, seen[None], torch.ones(1, seen.numel(), dtype=torch.long), SINKS)
    latents, logits = memory.latents_and_logits(memory_context(bb, state))
    assert n == 4 and weight == 4.0 and torch.allclose(latents, memory(memory_context(bb, state)))
    expected = torch.nn.functional.cross_entropy(logits[0].float(), gist[:4], reduction="sum")
    assert abs(float(nll.detach()) - float(expected.detach())) < 1e-4
    assert hits == int((logits[0].argmax(-1) == gist[:4]).sum())
    # the latents are the expected embeddings of exactly these distributions (the projection zeroed)
    with torch.no_grad():
        memory.out_proj.weight.zero_()
    latents, logits = memory.latents_and_logits(memory_context(bb, state))
    assert torch.allclose(latents, memory.to_embedding_scale(torch.softmax(logits, -1) @ bb.embedding_matrix()),
                          atol=1e-5)
    short = gist[:2]  # shorter than K: only its tokens are scored
    assert gist_nll(memory, short, memory.config, encode_prompt(bb, memory.config, prompt))[2] == 2

    class Tok:  # tokens 0 and 2 of the gist hold a digit
        @staticmethod
        def convert_ids_to_tokens(ids):
            return ["7", "a", "Ġ12", "b"][: len(ids)]
    bb.tokenizer = Tok()
    with torch.no_grad():
        weighted, total, _, _ = gist_nll(memory, gist, memory.config, encode_prompt(bb, memory.config, prompt), 3.0)
        each = torch.nn.functional.cross_entropy(logits[0].float(), gist[:4], reduction="none")
    assert total == 8.0 and abs(float(weighted) - float((each * torch.tensor([3.0, 1.0, 3.0, 1.0])).sum())) < 1e-4


def test_the_linear_readout_names_nothing():
    bb = Backbone(tiny_model("llama"))
    memory = firing_memory(bb)
    ids = torch.randint(3, 200, (1, 10), generator=torch.Generator().manual_seed(4))
    state, _ = prefill(bb, ids, torch.ones_like(ids), n_sinks=2)
    assert memory.latents_and_logits(memory_context(bb, state))[1] is None


def test_training_on_the_gist_teaches_the_latents_to_name_it():
    """A few AdamW steps on gist alone, one prompt: every latent comes to name its token, the cross-entropy
    falls (slowly here: the tiny model's small tied embeddings bound its logits), and the gradient reaches
    the consolidator's query projection (through the head's softmax), never the backbone."""
    bb = Backbone(tiny_model("llama"))
    memory = soft_memory(bb, query_agnostic=True, num_latents=3)
    g = torch.Generator().manual_seed(1)
    prompt, answer = torch.randint(3, bb.vocab_size, (LENGTH,), generator=g), torch.randint(3, bb.vocab_size, (4,))
    gist = prompt[5:8]
    objective = Objective(sft=0.0, gist=1.0)
    params = [p for p in memory.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        part = sequence_loss(bb, memory, prompt, answer, memory.config, objective, gist=gist)
        (part.gist / part.gist_weight).backward()
        assert memory.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
        optimizer.step()
        losses.append(float(part.gist.detach()) / part.gist_weight)
    assert all(p.grad is None for p in bb.model.parameters())
    assert losses[-1] < 0.8 * losses[0] and part.gist_hits == 3  # every latent names its token
    skipped = sequence_loss(bb, memory, prompt, answer, memory.config, objective, reconstruct=False, gist=gist)
    assert skipped.gist == 0.0 and skipped.gist_tokens == 0  # another example of the document scored it


def test_train_logs_the_gist_and_checks_its_settings(tmp_path):
    model = make_tiny_model_dir(tmp_path / "model", max_position_embeddings=2048)
    out = tmp_path / "mem"
    base = ["train", "--model", str(model), "--data", "recall:context=128,facts=2", "--stream", "--steps", "2",
            "--questions-per-document", "2", "--batch-size", "2", "--val-size", "2", "--eval-every", "2",
            "--max-length", "1024", "--prompt-window", "40", "--query-agnostic", "--no-trigger-memory",
            "--gist-weight", "1"]
    assert main([*base, "--out", str(out), "--readout", "soft-token", "--gist", "facts"]) == 0
    steps = [r for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "loss" in r]
    assert len(steps) == 2 and all(r["gist"] > 0 and 0 <= r["gist_hits"] <= 1 for r in steps)
    assert json.loads((out / "train_config.json").read_text())["gist"] == "facts"
    assert main([*base, "--out", str(tmp_path / "linear")]) == 2  # the linear readout names no tokens
    from flashmem.training.train import TrainConfig
    with pytest.raises(FlashmemError, match="--gist-weight needs --stream"):
        TrainConfig(data="recall", out="x", steps=3, gist_weight=1.0)


def test_a_gist_only_phase_skips_the_answer(tmp_path, monkeypatch):
    """--sft-weight 0 with no KL: no answer is decoded (training_nll is never called), no answer NLL is logged,
    and a step whose other examples repeat a document (nothing of their own to score) still trains."""
    import flashmem.training.objectives as objectives

    def refuse(*args, **kwargs):
        raise AssertionError("the answer was decoded")
    monkeypatch.setattr(objectives, "training_nll", refuse)
    model = make_tiny_model_dir(tmp_path / "model", max_position_embeddings=2048)
    out = tmp_path / "mem"
    argv = ["train", "--model", str(model), "--data", "recall:context=128,facts=2", "--stream", "--steps", "2",
            "--questions-per-document", "2", "--batch-size", "2", "--val-size", "0", "--max-length", "1024",
            "--prompt-window", "40", "--query-agnostic", "--no-trigger-memory", "--readout", "soft-token",
            "--gist-weight", "1", "--gist-digit-weight", "4", "--sft-weight", "0", "--out", str(out)]
    assert main(argv) == 0
    steps = [r for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "gist" in r]
    assert len(steps) == 2 and all(r["loss"] is None and r["gist"] > 0 for r in steps)
