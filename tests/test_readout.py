"""The consolidator's soft-token readout (MemoryConfig.readout, flashmem's extension): each latent is the
expected token embedding under the frozen LM head's distribution, plus the learned projection."""
import pytest
import torch
from test_engine import firing_memory

from flashmem.config import MemoryConfig
from flashmem.decoding.engine import memory_context, prefill
from flashmem.errors import FlashmemError
from flashmem.memory.registry import load_memory, save_memory
from flashmem.models.backbone import Backbone
from flashmem.models.testing import tiny_model


def context(bb):
    ids = torch.randint(3, 200, (2, 10), generator=torch.Generator().manual_seed(4))
    state, _ = prefill(bb, ids, torch.ones_like(ids), n_sinks=2)
    return memory_context(bb, state)


def soft_memory(bb):
    memory = firing_memory(bb, readout="soft-token")
    with torch.no_grad():
        memory.out_proj.weight.zero_()  # the projection's share is tested apart: here only the token part
    return memory


def test_a_confident_head_gives_that_tokens_embedding(monkeypatch):
    bb = Backbone(tiny_model("llama"))
    memory = soft_memory(bb)
    token = 7

    def peaked(hidden):
        logits = torch.zeros(*hidden.shape[:-1], bb.vocab_size)
        logits[..., token] = 50.0
        return logits + 0 * hidden.sum(-1, keepdim=True)
    monkeypatch.setattr(bb, "logits", peaked)
    latents = memory(context(bb))  # (B, K, d)
    expected = memory.to_embedding_scale(bb.embedding_matrix()[token])
    assert latents.shape == (2, 3, bb.hidden_size)
    assert torch.allclose(latents, expected.expand_as(latents), atol=1e-4)


def test_the_latent_is_the_expected_embedding_of_the_heads_distribution():
    bb = Backbone(tiny_model("qwen3"))
    memory = soft_memory(bb)
    x = torch.randn(2, 1, bb.hidden_size, generator=torch.Generator().manual_seed(0))
    normed = memory.out_norm(x)
    probs = torch.softmax(bb.logits(normed), -1)
    assert torch.allclose(memory.read_out(x), probs @ bb.embedding_matrix(), atol=1e-5)
    with torch.no_grad():
        memory.out_proj.weight.normal_(0.0, 0.05)
    assert torch.allclose(memory.read_out(x), probs @ bb.embedding_matrix() + memory.out_proj(normed), atol=1e-5)


def test_it_trains_and_reloads(tmp_path):
    bb = Backbone(tiny_model("llama"))
    memory = firing_memory(bb, readout="soft-token")
    memory(context(bb)).pow(2).sum().backward()
    assert memory.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0  # through the head's softmax
    assert memory.out_proj.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in bb.model.parameters())  # the head and embeddings stay frozen
    save_memory(memory, tmp_path / "m")
    again = load_memory(tmp_path / "m", bb)
    assert again.config.readout == "soft-token"
    ctx = context(bb)
    assert torch.allclose(again(ctx), memory(ctx), atol=1e-6)


def test_an_unknown_readout_is_named():
    with pytest.raises(FlashmemError, match="readout must be one of linear, soft-token, got 'tokens'"):
        MemoryConfig(readout="tokens")
