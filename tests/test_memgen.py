"""Invariants of the MemGen baseline on tiny random models: the adapter is off outside a weave, the
weaver re-reads the whole context, only the weaver trains, save/load round-trips, and it decodes
batched with padding under MemGen's delimiter policy."""
from dataclasses import replace

import pytest
import torch
from tokenizers import Tokenizer, pre_tokenizers
from tokenizers import models as tk_models
from transformers import PreTrainedTokenizerFast

from flashmem.config import GenerationConfig
from flashmem.decoding.engine import append_tokens, consolidate, forward_chunk, prefill, reprefill
from flashmem.decoding.generation import generate
from flashmem.errors import FlashmemError
from flashmem.memory.base import MemoryContext
from flashmem.memory.memgen import MemGenWeaver
from flashmem.memory.registry import build_memory, default_config, load_memory, save_memory
from flashmem.models.backbone import Backbone
from flashmem.models.testing import tiny_model
from flashmem.training.scoring import find_insertions, training_nll

VOCAB, K = 256, 3
COMMA, PERIOD, NEWLINE = 10, 11, 12  # the tiny tokenizer's delimiter ids


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level, one token per id of the tiny model; three of them are MemGen's delimiters."""
    words = ["<pad>", "<s>", "</s>"] + [f"w{i}" for i in range(3, VOCAB)]
    words[COMMA], words[PERIOD], words[NEWLINE] = ",", ".", "\n"
    tok = Tokenizer(tk_models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def backbone(family: str = "llama") -> Backbone:
    return Backbone(tiny_model(family), tiny_tokenizer(), name=f"tiny-{family}")


def weaver(bb: Backbone, seed: int = 0, **overrides) -> MemGenWeaver:
    torch.manual_seed(seed)
    memory = build_memory(bb, default_config("memgen", num_latents=K, **overrides))
    # PEFT starts LoRA B at zero (adapter = identity) and the projection starts at zero (latents =
    # the anchor); trained-looking values let tests see the adapter and the context act.
    with torch.no_grad():
        for name, p in memory.named_parameters():
            if "lora_B" in name or name == "proj.weight":
                p.normal_(0.0, 0.05)
    return memory


def padded_batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(13, VOCAB, (3, 9), generator=g)  # no delimiters in prompts
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    mask[2, :1] = 0
    return ids.masked_fill(mask == 0, 0), mask


def context(bb: Backbone, ids, mask) -> MemoryContext:
    state, _ = prefill(bb, ids, mask, 4)
    return MemoryContext(bb, state.cache, state.mask, state.positions, state.hidden, state.ids, state.ids_mask)


def plain_logits(bb: Backbone, ids, mask) -> torch.Tensor:
    with torch.no_grad():
        return bb.model(input_ids=ids, attention_mask=mask).logits


def sites(bb: Backbone) -> list:
    return [(layer.self_attn.q_proj, layer.self_attn.v_proj) for layer in bb.model.model.layers]


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_adapter_is_off_outside_a_weave(family):
    bb = backbone(family)
    ids, mask = padded_batch()
    before = plain_logits(bb, ids, mask)
    modules, params = sites(bb), dict(bb.model.named_parameters())
    memory = weaver(bb)
    assert torch.equal(plain_logits(bb, ids, mask), before)
    with torch.no_grad():
        latents = memory(context(bb, ids, mask))
    assert torch.equal(plain_logits(bb, ids, mask), before)
    assert sites(bb) == modules and dict(bb.model.named_parameters()) == params and bb.frozen()
    # ... and it was on during the weave: without the adapter the latents differ.
    with torch.no_grad():
        for name, p in memory.named_parameters():
            if "lora_B" in name:
                p.zero_()
        assert not torch.allclose(memory(context(bb, ids, mask)), latents, atol=1e-4)


def test_adapter_is_removed_when_a_weave_fails(monkeypatch):
    bb = backbone()
    memory = weaver(bb)
    ctx = context(bb, *padded_batch())
    originals = sites(bb)
    seen = []

    def failing_forward(*args, **kwargs):
        seen.append(type(bb.model.model.layers[0].self_attn.q_proj).__module__)
        raise RuntimeError("out of memory")

    monkeypatch.setattr(bb, "forward", failing_forward)
    with pytest.raises(RuntimeError):
        memory(ctx)
    assert seen[0].startswith("peft.")  # the adapter was on when the forward failed
    assert sites(bb) == originals


def test_weaver_reencodes_the_whole_context(monkeypatch):
    bb = backbone()
    memory = weaver(bb)
    ids, mask = padded_batch()
    ids, mask = ids[1:2], mask[1:2]  # one unpadded row of 9 tokens
    ctx = context(bb, ids, mask)
    caches, new_cache = [], bb.new_cache
    monkeypatch.setattr(bb, "new_cache", lambda: caches.append(new_cache()) or caches[-1])
    with torch.no_grad():
        first, again = memory(ctx), memory(ctx)
        changed = ids.clone()
        changed[0, 0] = 13 if int(ids[0, 0]) != 13 else 14
        earlier = memory(replace(ctx, ids=changed))
    # One fresh cache per weave, holding the whole context plus the K queries.
    assert len(caches) == 3 and caches[0] is not caches[1]
    assert [bb.cache_length(c) for c in caches] == [ids.shape[1] + K] * 3
    assert torch.equal(first, again)
    assert (earlier - first).norm(dim=-1).min() > 1e-4  # the first token reaches every latent


def test_padding_does_not_change_a_rows_latents():
    bb = backbone()
    memory = weaver(bb)
    ids, mask = padded_batch()
    with torch.no_grad():
        batched = memory(context(bb, ids, mask))
        for r in range(3):
            real = mask[r].bool()
            alone = memory(context(bb, ids[r : r + 1, real], mask[r : r + 1, real]))
            torch.testing.assert_close(batched[r : r + 1], alone, atol=1e-5, rtol=1e-5)


def test_only_the_weaver_trains():
    bb = backbone()
    memory = weaver(bb)
    frozen = {n: p.detach().clone() for n, p in bb.model.named_parameters()}
    prompt = torch.arange(20, 30)
    answer = torch.tensor([40, 41, COMMA, 42, 43, PERIOD, 44, NEWLINE, 45, COMMA, 46, 47])
    scored = training_nll(bb, memory, prompt, answer)
    assert scored.insertions == [2, 5, 7]  # at delimiters, budget 3
    scored.nll.backward()
    names = {n for n, p in memory.named_parameters() if p.requires_grad}
    lora = {f"lora.{i}.{t}.lora_{ab}.default.weight" for i in "01" for t in ("q_proj", "v_proj") for ab in "AB"}
    assert names == {"anchor", "queries", "proj.weight"} | lora == set(memory.trainable_state())
    for name, p in memory.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(p.grad is None and not p.requires_grad for p in bb.model.parameters())
    torch.optim.SGD(memory.parameters(), lr=0.1).step()
    assert all(torch.equal(p, frozen[n]) for n, p in bb.model.named_parameters())


def test_save_then_load_gives_identical_latents(tmp_path):
    bb = backbone()
    memory = weaver(bb)
    with torch.no_grad():
        memory.queries.add_(0.1)
        memory.proj.weight.mul_(1.5)
    save_memory(memory, tmp_path)
    loaded = load_memory(tmp_path, bb)
    assert isinstance(loaded, MemGenWeaver) and replace(loaded.config, version="") == memory.config
    ctx = context(bb, *padded_batch())
    with torch.no_grad():
        assert torch.equal(loaded(ctx), memory(ctx))
    ids, mask = padded_batch()
    assert torch.equal(plain_logits(bb, ids, mask), plain_logits(backbone(), ids, mask))


def test_batched_generation_inserts_at_delimiters():
    bb = backbone()
    memory = weaver(bb)
    ids, mask = padded_batch()
    forced = torch.randint(13, VOCAB, (3, 8), generator=torch.Generator().manual_seed(1))
    forced[0, [1, 2, 4, 6]] = torch.tensor([COMMA, PERIOD, NEWLINE, COMMA])
    forced[1, [3, 7]] = PERIOD  # the last token: memory after it would predict nothing
    result = generate(bb, ids, mask, memory, forced=forced)
    assert [t.consolidations for t in result.traces] == [[1, 2, 4], [3], []]
    assert all(t.prompt_memory for t in result.traces)
    # The teacher-forced (training) path agrees row by row, without padding.
    for r in range(3):
        alone = find_insertions(bb, memory, ids[r, mask[r].bool()], forced[r])
        assert alone.insertions == result.traces[r].consolidations
        torch.testing.assert_close(alone.nll, -result.logprobs[r].double().sum().float(), atol=1e-4, rtol=1e-5)
    free = generate(bb, ids, mask, memory, GenerationConfig(max_new_tokens=6))
    assert len(free.tokens) == 3 and all(1 <= len(t) <= 6 for t in free.tokens)


def test_reprefill_rebuilds_the_incremental_cache():
    bb = backbone()
    memory = weaver(bb)
    ids, mask = padded_batch()
    every, some = [True] * 3, [True, False, True]  # row 1 skips the second insertion
    with torch.no_grad():
        state, _ = prefill(bb, ids, mask, 4, keep_inputs=True)
        consolidate(bb, memory, state, every)
        token = torch.tensor([[20], [21], [PERIOD]])
        append_tokens(state, token)
        out = forward_chunk(bb, state, bb.embed(token), every)
        state.logits, state.hidden = out.logits[:, -1], out.hidden[:, -1]
        consolidate(bb, memory, state, some)
        live_cache, logits, hidden, length = state.cache, state.logits.clone(), state.hidden.clone(), state.length
        reprefill(bb, state, some)
    assert state.cache is not live_cache and bb.cache_length(state.cache) == length
    torch.testing.assert_close(state.hidden, hidden, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(state.logits, logits, atol=1e-5, rtol=1e-5)
    keys, live = bb.cache_kv(state.cache, bb.n_layers - 1)[0], bb.cache_kv(live_cache, bb.n_layers - 1)[0]
    real = state.mask.bool()[:, None, :, None].expand_as(keys)
    torch.testing.assert_close(keys[real], live[real], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["flashmem", "memgen", "softprompt"])
def test_only_firing_rows_are_consolidated(method):
    """A consolidation for some rows runs the memory on those rows alone, with the same result."""
    bb = backbone()
    if method == "memgen":
        memory = weaver(bb)
    else:
        torch.manual_seed(0)
        memory = build_memory(bb, default_config(method, num_latents=K))
        with torch.no_grad():
            for p in memory.parameters():
                p.add_(torch.randn_like(p) * 0.05)  # trained-looking: the context part is not zero
    seen = []
    memory.register_forward_pre_hook(lambda _, args: seen.append(args[0].hidden.shape[0]))
    ids, mask = padded_batch()
    some = torch.tensor([True, False, True])
    with torch.no_grad():
        full_state, _ = prefill(bb, ids, mask, 4)
        full = consolidate(bb, memory, full_state, [True] * 3)
        part_state, _ = prefill(bb, ids, mask, 4)
        part = consolidate(bb, memory, part_state, some.tolist())
    assert seen == [3, 2]
    torch.testing.assert_close(part[some], full[some], atol=1e-5, rtol=1e-5)
    assert torch.equal(part[1], torch.zeros_like(part[1])) and part_state.mask[1, -K:].sum() == 0
    torch.testing.assert_close(part_state.logits[some], full_state.logits[some], atol=1e-5, rtol=1e-5)


def test_memgen_config_defaults_and_overrides():
    cfg = default_config("memgen", )
    assert (cfg.method, cfg.trigger, cfg.budget, cfg.min_gap, cfg.prompt_memory) == ("memgen", "delimiter", 3, 1, True)
    assert (cfg.lora_r, cfg.lora_alpha, cfg.reprefill) == (16, 32, False)
    assert default_config("memgen", budget=5, reprefill=True).budget == 5
    with pytest.raises(FlashmemError, match="budget"):
        default_config("memgen", budget=-1)


def test_delimiter_trigger_without_a_tokenizer_is_a_clear_error():
    bb = Backbone(tiny_model("llama"))
    memory = weaver(bb)
    with pytest.raises(FlashmemError, match="tokenizer"):
        training_nll(bb, memory, torch.arange(20, 25), torch.tensor([40, COMMA, 41]))


def test_generation_with_reprefill_gives_the_same_answers():
    """MemGen's re-prefill after each insertion changes the cost, not the numbers."""
    bb = backbone()
    memory = weaver(bb)
    ids, mask = padded_batch()
    forced = torch.randint(13, VOCAB, (3, 8), generator=torch.Generator().manual_seed(1))
    forced[0, [1, 4]] = COMMA
    forced[2, 2] = PERIOD
    plain = generate(bb, ids, mask, memory, forced=forced)
    rebuilt = generate(bb, ids, mask, memory, forced=forced, policy=replace(memory.config, reprefill=True))
    assert [t.consolidations for t in rebuilt.traces] == [t.consolidations for t in plain.traces] == [[1, 4], [], [2]]
    torch.testing.assert_close(rebuilt.logprobs, plain.logprobs, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("method", ["flashmem", "softprompt", "memgen"])
def test_every_untrained_memory_emits_the_newline_anchor(method):
    # All methods start from the same harmless latents: K copies of the neutral embedding, on the
    # embedding scale, whatever the context. (This word-level tokenizer splits "\n" away, so the
    # neutral embedding is its fallback, the mean row; the real-model test checks the newline.)
    bb = backbone()
    torch.manual_seed(0)
    memory = build_memory(bb, default_config(method, num_latents=K))
    neutral = bb.text_embedding("\n")
    assert torch.allclose(neutral, bb.model.get_input_embeddings().weight.float().mean(0))
    expected = neutral / neutral.norm() * bb.embedding_norm()
    for seed in (0, 1):
        with torch.no_grad():
            latents = memory(context(bb, *padded_batch(seed)))
        assert latents.shape == (3, K, bb.hidden_size)
        assert torch.allclose(latents, expected.expand_as(latents), atol=1e-5)
