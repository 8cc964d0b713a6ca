"""Every operation of the backbone wall, on each supported family built from a tiny config: what it returns
is what the transformers model itself computes, and nothing it does changes the model."""
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from flashmem.decoding.engine import prefill
from flashmem.errors import FlashmemError
from flashmem.memory.consolidator import shared_kv_attention
from flashmem.models.backbone import SUPPORTED_MODEL_TYPES, Backbone, _capture_attention_input
from flashmem.models.testing import tiny_model, tiny_tokenizer

FAMILIES = list(SUPPORTED_MODEL_TYPES)


def backbone(family: str) -> Backbone:
    tok = tiny_tokenizer()
    return Backbone(tiny_model(family, vocab_size=len(tok)), tok, name=f"tiny-{family}")


def ids_and_mask(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 250, (2, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    return ids.masked_fill(mask == 0, 0), mask


@pytest.mark.parametrize("family", FAMILIES)
def test_dimensions_tokens_and_identity(family):
    bb = backbone(family)
    config = bb.model.config
    assert (bb.n_layers, bb.n_heads, bb.n_kv_heads, bb.head_dim) == (2, 4, 2, 16)
    assert (bb.hidden_size, bb.vocab_size, bb.max_positions, bb.model_type) == (64, len(bb.tokenizer), 512, family)
    assert bb.scaling == pytest.approx(16 ** -0.5)
    ids = torch.tensor([[5, 6, 7]])
    assert torch.equal(bb.embed(ids), bb.model.get_input_embeddings()(ids))
    table = bb.model.get_input_embeddings().weight.float()
    assert bb.embedding_norm() == pytest.approx(float(table.norm(dim=-1).mean()))
    newline = bb.tokenizer("\n", add_special_tokens=False).input_ids[-1]
    assert torch.equal(bb.text_embedding("\n"), table[newline])
    assert bb.stop_ids() == [2] and bb.pad_id() == 0  # the tokenizer's </s> and <pad>
    bb.model.generation_config.eos_token_id = [2, 7]
    assert bb.stop_ids() == [2, 7]  # read at each call
    identity = bb.identity()
    assert identity["model_type"] == family and identity["name"] == f"tiny-{family}"
    assert identity == backbone(family).identity() and bb.frozen()
    assert bb.parameter_ids() == {id(p) for p in bb.model.parameters()}
    assert config is bb.model.config


@pytest.mark.parametrize("family", FAMILIES)
def test_forward_on_a_cache_equals_the_model(family):
    bb = backbone(family)
    ids, mask = ids_and_mask()
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    reference = bb.model(input_ids=ids, attention_mask=mask, position_ids=positions, output_hidden_states=True)
    cache = bb.new_cache()
    out = bb.forward(bb.embed(ids), cache, positions, mask, all_logits=True)
    torch.testing.assert_close(out.logits, reference.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.hidden, reference.hidden_states[-1], atol=1e-5, rtol=1e-5)
    assert out.query is None and bb.cache_length(cache) == 9
    keys, values = bb.cache_kv(cache, 1)
    assert keys.shape == values.shape == (2, 2, 9, 16)
    last = bb.forward(bb.embed(ids), bb.new_cache(), positions, mask)
    assert last.logits.shape == (2, 1, bb.vocab_size)  # only the last position's logits by default
    bb.crop(cache, 5)
    assert bb.cache_length(cache) == 5 and bb.cache_kv(cache, 0)[0].shape[2] == 5


@pytest.mark.parametrize("family", FAMILIES)
def test_the_monitors_query_is_the_last_layers_own(family):
    bb = backbone(family)
    ids, mask = ids_and_mask(1)
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    attn = bb.model.model.layers[-1].self_attn
    seen = {}
    handle = attn.q_proj.register_forward_hook(lambda m, a, out: seen.update(q=out))
    out = bb.forward(bb.embed(ids), bb.new_cache(), positions, mask, want_query=True)
    handle.remove()
    query = seen["q"].view(2, 9, -1, 16)
    if family == "qwen3":
        query = attn.q_norm(query)
    cos, sin = bb.rotary(query, positions)
    expected, _ = apply_rotary_pos_emb(query.transpose(1, 2), query.transpose(1, 2), cos, sin)
    torch.testing.assert_close(out.query, expected, atol=1e-5, rtol=1e-5)
    assert not attn._forward_pre_hooks  # the capturing hook is gone


@pytest.mark.parametrize("family", FAMILIES)
def test_a_layer_copy_step_equals_the_real_decoder_layer(family):
    """latent_qkv + attention over [cache | own key] + finish_layer is the last decoder layer for one new token."""
    bb = backbone(family)
    ids, mask = ids_and_mask(2)
    state, _ = prefill(bb, ids, mask, 4)
    last = bb.model.model.layers[-1]
    seen = {}
    pre = last.register_forward_pre_hook(lambda m, a, kw: seen.update(x=kw.get("hidden_states", a[0] if a else None)),
                                         with_kwargs=True)
    post = last.register_forward_hook(lambda m, a, out: seen.update(y=out[0] if isinstance(out, tuple) else out))
    keys, values = (t.clone() for t in bb.cache_kv(state.cache, bb.n_layers - 1))
    token = torch.tensor([[40], [41]])
    positions = state.positions[:, None]
    bb.forward(bb.embed(token), state.cache, positions, torch.cat([state.mask, torch.ones(2, 1, dtype=torch.long)], 1))
    pre.remove()
    post.remove()
    copy = bb.shared_kv_copy(bb.n_layers - 1)
    cos, sin = bb.rotary(seen["x"], positions)
    query, k, v = bb.latent_qkv(copy, bb.n_layers - 1, seen["x"], cos, sin)
    new_keys, new_values = bb.cache_kv(state.cache, bb.n_layers - 1)
    torch.testing.assert_close(k, new_keys[:, :, -1:], atol=1e-5, rtol=1e-5)  # as the cache holds them
    torch.testing.assert_close(v, new_values[:, :, -1:], atol=1e-5, rtol=1e-5)
    attended = shared_kv_attention(query, keys, values, state.mask.bool(), k, v, bb.scaling)
    torch.testing.assert_close(bb.finish_layer(copy, seen["x"], attended), seen["y"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_copies_are_trainable_independent_and_have_no_kv(family):
    bb = backbone(family)
    before = {k: v.clone() for k, v in bb.model.state_dict().items()}
    copy, norm = bb.shared_kv_copy(1), bb.final_norm_copy()
    assert copy.self_attn.k_proj is None and copy.self_attn.v_proj is None
    assert getattr(copy.self_attn, "k_norm", None) is None
    assert all(p.requires_grad for p in list(copy.parameters()) + list(norm.parameters()))
    with torch.no_grad():
        for p in list(copy.parameters()) + list(norm.parameters()):
            p.add_(1.0)
    after = bb.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before) and bb.frozen()


@pytest.mark.parametrize("family", FAMILIES)
def test_patched_swaps_lora_sites_and_always_restores(family):
    bb = backbone(family)
    sites = bb.lora_sites()
    assert set(sites) == {"0", "1"} and all(len(site) == 2 for site in sites.values())
    original = sites["1"]
    name = sorted(original)[0]
    stand_in = torch.nn.Linear(original[name].in_features, original[name].out_features)
    with bb.patched({("1", name): stand_in}):
        assert bb.lora_sites()["1"][name] is stand_in
    assert bb.lora_sites()["1"][name] is original[name]
    with pytest.raises(RuntimeError):
        with bb.patched({("1", name): stand_in}):
            raise RuntimeError("weave failed")
    assert bb.lora_sites()["1"][name] is original[name]


def test_unsupported_layouts_are_refused_with_what_is_missing():
    with pytest.raises(FlashmemError, match="gpt2.*not supported"):
        Backbone(GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32)))
    model = tiny_model("llama")
    del model.model.rotary_emb
    with pytest.raises(FlashmemError, match="missing model.model.rotary_emb"):
        Backbone(model)


def test_a_query_hook_without_position_embeddings_is_a_clear_error():
    """A transformers version that passed the rotary tables positionally would leave the monitor blind."""
    hook = _capture_attention_input({})
    tables = (torch.zeros(1, 1, 16), torch.zeros(1, 1, 16))
    with pytest.raises(FlashmemError, match="position_embeddings"):
        hook(None, (torch.zeros(1, 1, 64), tables), {})
    store = {}
    _capture_attention_input(store)(None, (), {"hidden_states": torch.ones(1), "position_embeddings": tables})
    assert store["position_embeddings"] is tables
