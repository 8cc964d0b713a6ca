"""The training signals beyond the paper's answer NLL (training/objectives.py) and the recall stream of
new documents: each is checked against a recomputation without the engine, on tiny models."""
import json

import pytest
import torch
from test_engine import firing_memory
from tiny_assets import make_tiny_model_dir

from flashmem.cli import main
from flashmem.data.recall import SPLIT_SIZES, RecallStream, make_document, make_item, parse_spec
from flashmem.errors import FlashmemError
from flashmem.models.backbone import Backbone
from flashmem.models.testing import tiny_model
from flashmem.training.objectives import Objective, content_weights, reconstruction_nll, sequence_loss, teacher_logprobs
from flashmem.training.scoring import kl_divergence, training_nll

SINKS, WINDOW, LENGTH = 4, 3, 16


def case(vocab: int, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (LENGTH,), generator=g), torch.randint(3, vocab, (6,), generator=g)


def test_teacher_is_the_plain_model_with_the_whole_prompt():
    model = tiny_model("llama")
    bb = Backbone(model)
    prompt, answer = case(bb.vocab_size)
    full = model(input_ids=torch.cat([prompt, answer])[None]).logits[0, LENGTH - 1:-1]
    assert torch.allclose(teacher_logprobs(bb, prompt, answer), torch.log_softmax(full, -1), atol=1e-5)


def test_kl_is_zero_against_itself_and_carries_a_gradient_to_the_memory():
    bb = Backbone(tiny_model("llama"))
    prompt, answer = case(bb.vocab_size)
    memory = firing_memory(bb, n_sinks=SINKS, prompt_window=WINDOW, trigger_memory=False)
    with torch.no_grad():  # the memory's own distributions as the teacher: KL 0
        own = training_nll(bb, memory, prompt, answer)
    logits = torch.randn(4, bb.vocab_size)
    assert kl_divergence(torch.log_softmax(logits, -1), logits).abs() < 1e-5
    scored = training_nll(bb, memory, prompt, answer, teacher=teacher_logprobs(bb, prompt, answer))
    assert float(scored.kl.detach()) > 0 and abs(float(scored.nll.detach()) - float(own.nll)) < 1e-5
    scored.kl.backward()
    assert memory.out_proj.weight.grad is not None and memory.out_proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("agnostic", [False, True])
def test_reconstruction_reads_the_evicted_span_after_the_memory_alone(agnostic):
    model = tiny_model("qwen2")
    bb = Backbone(model)
    prompt, _ = case(bb.vocab_size)
    memory = firing_memory(bb, n_sinks=SINKS, prompt_window=WINDOW, trigger_memory=False, query_agnostic=agnostic)
    objective = Objective(recon=1.0, recon_tokens=5)
    nll, weight = reconstruction_nll(bb, memory, prompt, memory.config, objective)
    # recomputed without a cache: sinks, the latents, then the span, at the positions the engine uses
    from flashmem.decoding.engine import memory_context, prefill
    seen = prompt[:LENGTH - WINDOW] if agnostic else prompt
    state, _ = prefill(bb, seen[None], torch.ones(1, seen.numel(), dtype=torch.long), SINKS)
    latents = memory(memory_context(bb, state))[0]
    span = prompt[SINKS:LENGTH - WINDOW][:5]
    emb, k = model.get_input_embeddings(), latents.shape[0]
    positions = [*range(SINKS), *range(seen.numel(), seen.numel() + k + span.numel())]
    logits = model(inputs_embeds=torch.cat([emb(prompt[:SINKS]), latents, emb(span)])[None],
                   position_ids=torch.tensor([positions])).logits[0, SINKS + k - 1:-1]
    assert weight == 5 and abs(float(nll) - float(torch.nn.functional.cross_entropy(logits, span, reduction="sum"))) < 1e-4
    if agnostic:  # the window (the question) never reaches the reconstruction
        other = prompt.clone()
        other[-1] = 3 + (prompt[-1] - 2) % (bb.vocab_size - 3)
        assert abs(float(reconstruction_nll(bb, memory, other, memory.config, objective)[0]) - float(nll)) < 1e-6


def test_sequence_loss_parts_and_digit_weights():
    bb = Backbone(tiny_model("llama"))
    prompt, answer = case(bb.vocab_size)
    memory = firing_memory(bb, n_sinks=SINKS, prompt_window=WINDOW, trigger_memory=False)
    objective = Objective(sft=1.0, kl=0.5, recon=2.0)
    part = sequence_loss(bb, memory, prompt, answer, memory.config, objective)
    assert float(part.kl) > 0 and float(part.recon) > 0 and part.recon_weight == LENGTH - SINKS - WINDOW
    # one shared prefill gives the same parts as each computed on its own
    alone = training_nll(bb, memory, prompt, answer, teacher=teacher_logprobs(bb, prompt, answer))
    assert abs(float(alone.kl) - float(part.kl)) < 1e-5 and abs(float(alone.nll) - float(part.nll)) < 1e-5
    assert abs(float(reconstruction_nll(bb, memory, prompt, memory.config, objective)[0]) - float(part.recon)) < 1e-5
    skipped = sequence_loss(bb, memory, prompt, answer, memory.config, objective, reconstruct=False)
    assert skipped.recon == 0.0 and skipped.recon_weight == 0.0
    plain = sequence_loss(bb, memory, prompt, answer, memory.config, Objective())
    assert plain.kl == 0.0 and plain.recon == 0.0 and abs(float(plain.nll) - float(part.nll)) < 1e-5

    class Tok:
        @staticmethod
        def convert_ids_to_tokens(ids):
            return ["a", "4", "Ġ12", "b"][: len(ids)]
    bb.tokenizer = Tok()
    assert content_weights(bb, torch.arange(4), 3.0).tolist() == [1.0, 3.0, 3.0, 1.0]


def test_recall_stream_never_repeats_a_document_and_asks_each_one_q_questions():
    spec = parse_spec("recall:context=256,facts=4")
    stream = RecallStream(spec, questions_per_document=3)
    items = [stream[i] for i in range(9)]
    docs = [it.question[: it.question.index("\n\nQuestion:")] for it in items]
    assert docs[0] == docs[1] == docs[2] != docs[3] and len(set(docs)) == 3
    assert len({it.final for it in items[:3]}) == 3  # three different facts of one document
    assert all(it.final in it.question.split("\n\nQuestion:")[0] for it in items)
    split_docs = {make_document(spec, split, i).text for split in SPLIT_SIZES for i in range(20)}
    assert not split_docs & set(docs)
    with pytest.raises(FlashmemError, match="questions per document must be in 1..4"):
        RecallStream(spec, 5)


def test_fit_documents_cycle_over_the_train_items_documents():
    """--fit-documents N: the stream repeats train documents 1..N, the very documents of train items 1..N."""
    spec = parse_spec("recall:context=128,facts=4")
    stream = RecallStream(spec, questions_per_document=2, documents=3)
    docs = [stream[i].question.split("\n\nQuestion:")[0] for i in range(14)]
    train_docs = [make_item(spec, "train", j).question.split("\n\nQuestion:")[0] for j in range(3)]
    assert docs == [train_docs[(i // 2) % 3] for i in range(14)]
    assert stream[0].final == make_item(spec, "train", 0).final  # fact 0 is the needle eval asks
    assert "train documents 1..3, repeated" in stream[0].source
    with pytest.raises(FlashmemError, match="fit check cycles over 1..4000"):
        RecallStream(spec, 1, documents=0)


def test_train_streams_recall_with_every_objective(tmp_path):
    model = make_tiny_model_dir(tmp_path / "model", max_position_embeddings=2048)
    out = tmp_path / "mem"
    argv = ["train", "--model", str(model), "--data", "recall:context=128,facts=2", "--out", str(out), "--stream",
            "--questions-per-document", "2", "--batch-size", "2", "--steps", "2", "--val-size", "2", "--eval-every", "2",
            "--max-length", "1024", "--prompt-window", "40", "--query-agnostic", "--no-trigger-memory",
            "--kl-weight", "0.5", "--recon-weight", "1", "--recon-tokens", "16", "--recon-digit-weight", "4"]
    assert main(argv) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "loss" in r]
    assert len(steps) == 2 and all(r["kl"] > 0 and r["recon"] > 0 for r in steps) and "val_loss" in log[-1]
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["data"]["consumed"] == 4 and "permutation" not in state["data"]
    assert json.loads((out / "memory_config.json").read_text())["query_agnostic"] is True


def test_objective_settings_are_checked():
    from flashmem.training.train import TrainConfig

    with pytest.raises(FlashmemError, match="--recon-weight needs --prompt-window"):
        TrainConfig(data="recall", out="x", recon_weight=1.0)
    with pytest.raises(FlashmemError, match="--stream needs --data recall"):
        TrainConfig(data="gsm8k", out="x", stream=True, steps=3)
    with pytest.raises(FlashmemError, match="--stream needs"):
        TrainConfig(data="recall", out="x", stream=True)
    with pytest.raises(FlashmemError, match="one of them > 0"):
        TrainConfig(data="recall", out="x", sft_weight=0.0)
    with pytest.raises(FlashmemError, match="--fit-documents needs --stream"):
        TrainConfig(data="recall", out="x", steps=3, fit_documents=4)
    with pytest.raises(FlashmemError, match="--stop-at must be >= 1"):
        TrainConfig(data="recall", out="x", steps=3, stop_at=0)
