"""The consolidator's learned per-step inputs (MemoryConfig.step_queries, flashmem's extension): zero at the
start, so the untrained consolidator is the paper's; each one reaches its own latent and the ones after it."""
import pytest
import torch
from test_engine import firing_memory
from test_readout import context

from flashmem.config import MemoryConfig
from flashmem.errors import FlashmemError
from flashmem.memory.registry import load_memory, save_memory
from flashmem.models.backbone import Backbone
from flashmem.models.testing import tiny_model


def test_untrained_step_queries_change_nothing_and_each_reaches_its_own_latent_onward():
    bb = Backbone(tiny_model("qwen2"))
    plain, stepped = firing_memory(bb, num_latents=4), firing_memory(bb, num_latents=4, step_queries=True)
    ctx = context(bb)
    assert torch.allclose(plain(ctx), stepped(ctx), atol=1e-6)  # same seed, zero step inputs
    with torch.no_grad():
        stepped.step_inputs[2].normal_(0.0, 1.0)
    before, after = plain(ctx), stepped(ctx)
    assert torch.allclose(before[:, :2], after[:, :2], atol=1e-6)
    assert not torch.allclose(before[:, 2], after[:, 2], atol=1e-3)


def test_step_queries_train_save_and_reload(tmp_path):
    bb = Backbone(tiny_model("llama"))
    memory = firing_memory(bb, num_latents=3, step_queries=True, readout="soft-token")
    memory(context(bb)).pow(2).sum().backward()
    assert memory.step_inputs.grad is not None and memory.step_inputs.grad.abs().sum() > 0
    assert "step_inputs" in memory.trainable_state()
    with torch.no_grad():
        memory.step_inputs.normal_(0.0, 0.1)
    save_memory(memory, tmp_path / "m")
    again = load_memory(tmp_path / "m", bb)
    assert again.config.step_queries and torch.allclose(again(context(bb)), memory(context(bb)), atol=1e-6)


def test_step_queries_are_the_consolidators():
    with pytest.raises(FlashmemError, match="step_queries are the consolidator's"):
        MemoryConfig(method="softprompt", step_queries=True)
