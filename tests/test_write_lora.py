"""A consolidator that writes its latents at every layer (MemoryConfig.write_lora_r, flashmem's extension):
a LoRA on every layer's key/value projections, on only while the latents go into the cache."""
import pytest
import torch
from test_engine import firing_memory

from flashmem.config import GenerationConfig
from flashmem.decoding.generation import generate
from flashmem.memory.registry import load_memory, save_memory
from flashmem.models.backbone import Backbone
from flashmem.models.testing import tiny_model
from flashmem.training.scoring import training_nll

SINKS, LENGTH = 4, 12


def memories(bb, **overrides):
    """A plain consolidator and a writing one with the same weights; the writer's LoRA B randomised."""
    plain = firing_memory(bb, n_sinks=SINKS, trigger_memory=False, **overrides)
    writing = firing_memory(bb, n_sinks=SINKS, trigger_memory=False, write_lora_r=4, **overrides)
    writing.load_state_dict(plain.state_dict(), strict=False)
    return plain, writing


def randomise_writer(memory):
    with torch.no_grad():
        for p in memory.write_lora.parameters():
            p.normal_(0.0, 0.3)


def run(bb, memory, ids, window=None):
    res = generate(bb, ids, torch.ones_like(ids), memory, GenerationConfig(max_new_tokens=4, prompt_window=window),
                   keep_logits=True)
    return torch.stack(res.step_logits), res


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_untrained_writer_writes_what_the_plain_backbone_writes(family):
    bb = Backbone(tiny_model(family))
    ids = torch.randint(3, 200, (2, LENGTH), generator=torch.Generator().manual_seed(1))
    plain, writing = memories(bb)
    assert writing.writes_backbone and not plain.writes_backbone
    assert len(list(writing.write_lora.parameters())) == 2 * 2 * bb.n_layers  # A and B, k and v, every layer
    assert torch.allclose(run(bb, plain, ids)[0], run(bb, writing, ids)[0], atol=1e-5)
    randomise_writer(writing)
    assert not torch.allclose(run(bb, plain, ids)[0], run(bb, writing, ids)[0], atol=1e-3)


def test_the_adapter_is_on_for_the_latents_only():
    """Recomputed with transformers alone: the prompt unadapted, the latents through the adapted model, the
    answer tokens unadapted again; and the backbone is as it was afterwards."""
    model = tiny_model("llama")
    bb = Backbone(model)
    ids = torch.randint(3, 200, (1, LENGTH), generator=torch.Generator().manual_seed(2))
    _, writing = memories(bb)
    randomise_writer(writing)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    logits, res = run(bb, writing, ids)
    from transformers import DynamicCache
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(input_ids=ids, cache=cache)
        with writing.writer():
            model(inputs_embeds=res.latents[0][1], cache=cache, position_ids=torch.arange(LENGTH, LENGTH + 3)[None])
        pos = LENGTH + 3
        last = model(input_ids=torch.tensor([[res.tokens[0][0]]]), cache=cache, position_ids=torch.tensor([[pos]])).logits
    assert torch.allclose(last[0, -1], logits[1, 0], atol=1e-4)
    assert bb.patch_depth == 0 and all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_the_cut_writes_the_latents_apart_and_training_reaches_the_adapter(tmp_path):
    bb = Backbone(tiny_model("qwen2"))
    ids = torch.randint(3, 200, (2, LENGTH), generator=torch.Generator().manual_seed(3))
    plain, writing = memories(bb, prompt_window=3, query_agnostic=True)
    assert torch.allclose(run(bb, plain, ids)[0], run(bb, writing, ids)[0], atol=1e-5)  # untrained: same as one chunk
    randomise_writer(writing)
    logits, _ = run(bb, writing, ids)
    save_memory(writing, tmp_path / "mem")
    assert torch.allclose(run(bb, load_memory(tmp_path / "mem", bb), ids)[0], logits, atol=1e-6)
    scored = training_nll(bb, writing, ids[0], torch.tensor([5, 6, 7]))
    scored.nll.backward()
    grads = [p.grad for p in writing.write_lora.parameters()]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0
