"""Invariants of the core engine on tiny Llama, Qwen2 and Qwen3 models built from configs."""
import pytest
import torch

from flashmem.config import GenerationConfig, MemoryConfig
from flashmem.decoding.engine import prefill
from flashmem.decoding.generation import generate
from flashmem.decoding.monitor import attention_entropy, sink_mask
from flashmem.memory.consolidator import shared_kv_attention
from flashmem.memory.registry import build_memory
from flashmem.models.backbone import Backbone, _project_kv, _project_query
from flashmem.models.testing import tiny_model
from flashmem.training.scoring import find_insertions, score_with_insertions

FAMILIES = ["llama", "qwen2", "qwen3", "mistral"]


def padded_batch(vocab: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (3, 10), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    mask[2, :1] = 0
    return ids.masked_fill(mask == 0, 0), mask


def firing_memory(bb, **overrides):
    """A consolidator that fires on most steps (low threshold, short gap).

    Its zero-initialised output projection is given random weights, as training would, so the
    latents depend on the context and every part of the consolidator gets a gradient.
    """
    cfg = dict(threshold=0.0, min_gap=2, budget=3, num_latents=3)
    cfg.update(overrides)
    torch.manual_seed(0)
    memory = build_memory(bb, MemoryConfig(**cfg))
    with torch.no_grad():
        memory.out_proj.weight.normal_(0.0, 0.05)
    return memory


@pytest.mark.parametrize("family", FAMILIES)
def test_memory_disabled_matches_hf_generate(family):
    model = tiny_model(family)
    ids, mask = padded_batch(model.config.vocab_size)
    ref = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False,
                         pad_token_id=0, eos_token_id=None)
    bb = Backbone(model)
    ours = generate(bb, ids, mask, firing_memory(bb), GenerationConfig(max_new_tokens=12, use_memory=False))
    assert ours.tokens == ref[:, ids.shape[1]:].tolist()
    assert all(t.consolidations == [] and not t.prompt_memory for t in ours.traces)


def eager_entropy(eager, seq, mask, n_sinks):
    """Reference: last-layer eager attention of the last position, sinks zeroed and renormalised."""
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    out = eager(input_ids=seq, attention_mask=mask, position_ids=positions, output_attentions=True)
    attn = out.attentions[-1][:, :, -1, :].double()  # (B, H, T)
    keep = (mask.bool() & ~sink_mask(mask, n_sinks))[:, None, :]
    attn = attn * keep
    attn = attn / attn.sum(-1, keepdim=True)
    plogp = torch.where(attn > 0, attn * attn.log(), torch.zeros_like(attn))
    return -plogp.sum(-1).mean(-1)


@pytest.mark.parametrize("family", FAMILIES)
def test_monitor_entropy_equals_eager_attention(family):
    model = tiny_model(family)
    eager = tiny_model(family, attn_implementation="eager")
    bb = Backbone(model)
    ids, mask = padded_batch(model.config.vocab_size, seed=1)
    res = generate(bb, ids, mask, None, GenerationConfig(max_new_tokens=8), monitor=True)
    gen = torch.tensor(res.tokens)
    for step in range(gen.shape[1] - 1):  # the last token is never forwarded
        seq = torch.cat([ids, gen[:, : step + 1]], 1)
        full_mask = torch.cat([mask, torch.ones(3, step + 1, dtype=torch.long)], 1)
        ref = eager_entropy(eager, seq, full_mask, n_sinks=4)
        ours = torch.tensor([t.entropy[step] for t in res.traces], dtype=torch.float64)
        assert torch.allclose(ours, ref, atol=1e-5), (step, ours, ref)


def test_monitor_degenerate_cases():
    torch.manual_seed(0)
    q, k = torch.randn(2, 4, 1, 8), torch.randn(2, 2, 6, 8)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    sinks = sink_mask(mask, 3)
    # row 0: every real key is a sink -> defined as 0; row 1: three non-sink keys remain
    ent = attention_entropy(q, k, mask.bool()[:, None, :], sinks, 0.35)
    assert ent[0, 0] == 0 and 0 < ent[1, 0] <= torch.log(torch.tensor(3.0)) + 1e-6
    # All mass on a sink: a real (unpadded) first slot whose key dwarfs the rest. The renormalised
    # distribution over the non-sink keys is still exact, not 0/0.
    q2, k2 = q.clone(), k.clone()
    q2[1, 1], q2[1, 3] = q2[1, 0], q2[1, 2]  # the two query heads of each KV group look the same way
    k2[1, :, 0] = q2[1, ::2, 0] * 1e4  # row 1, slot 0 (its sink with n_sinks=1), aligned with those queries
    ent2 = attention_entropy(q2, k2, mask.bool()[:, None, :], sink_mask(mask, 1), 0.35)
    scores = torch.einsum("hd,htd->ht", q2[1, :, 0].double(), k2[1].repeat_interleave(2, 0).double()) * 0.35
    assert torch.softmax(scores, -1)[:, 0].min() > 0.999  # the sink does hold all the mass
    rest = torch.softmax(scores[:, 1:], -1)
    expected = -(rest * rest.log()).sum(-1).mean()
    assert torch.allclose(ent2[1, 0].double(), expected, atol=1e-5)
    # padding is not a key: prepending padded slots changes nothing
    k3 = torch.cat([torch.randn(2, 2, 2, 8), k], 2)
    mask3 = torch.cat([torch.zeros(2, 2, dtype=torch.long), mask], 1)
    ent3 = attention_entropy(q, k3, mask3.bool()[:, None, :], sink_mask(mask3, 3), 0.35)
    assert torch.allclose(ent3, ent)


@pytest.mark.parametrize("family", FAMILIES)
def test_shared_kv_attention_equals_recomputed_reference(family):
    """Reading the cache equals recomputing K/V from the hidden states with the layer's own projections."""
    model = tiny_model(family)
    bb = Backbone(model)
    ids, mask = padded_batch(model.config.vocab_size, seed=2)
    captured = {}
    attn = model.model.layers[-1].self_attn
    hook = attn.register_forward_pre_hook(
        lambda m, a, kw: captured.update(h=kw["hidden_states"], pe=kw["position_embeddings"]), with_kwargs=True)
    state, _ = prefill(bb, ids, mask, n_sinks=4)
    hook.remove()
    cos, sin = captured["pe"]
    ref_k, ref_v = _project_kv(attn, captured["h"], cos, sin, bb.head_dim)  # (B, n_kv, T, D)
    keys, values = bb.cache_kv(state.cache, bb.n_layers - 1)
    torch.manual_seed(3)
    x = torch.randn(3, 1, bb.hidden_size)
    lat_cos, lat_sin = bb.rotary(x, state.positions[:, None])
    query = _project_query(attn, x, lat_cos, lat_sin, bb.head_dim)
    lat_k, lat_v = _project_kv(attn, x, lat_cos, lat_sin, bb.head_dim)
    ours = shared_kv_attention(query, keys, values, mask.bool(), lat_k, lat_v, bb.scaling)
    # reference: plain multi-head attention with K/V heads repeated, padding masked
    group = bb.n_heads // bb.n_kv_heads
    k_all = torch.cat([ref_k, lat_k], 2).repeat_interleave(group, 1)
    v_all = torch.cat([ref_v, lat_v], 2).repeat_interleave(group, 1)
    allowed = torch.cat([mask.bool(), torch.ones(3, 1, dtype=torch.bool)], 1)[:, None, None, :]
    ref = torch.nn.functional.scaled_dot_product_attention(query, k_all, v_all, attn_mask=allowed, scale=bb.scaling)
    assert torch.allclose(ours, ref.transpose(1, 2).reshape(3, 1, -1), atol=1e-5)


def recompute_logits(model, embeds):
    """Logits of a whole sequence given as embeddings, no cache, consecutive positions."""
    positions = torch.arange(embeds.shape[0])[None]
    return model(inputs_embeds=embeds[None], position_ids=positions).logits[0]


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_injection_equals_recomputation(family):
    model = tiny_model(family)
    bb = Backbone(model)
    ids, mask = padded_batch(model.config.vocab_size, seed=4)
    memory = firing_memory(bb, threshold=2.0)  # about half the steps of a tiny random model exceed it
    res = generate(bb, ids, mask, memory, GenerationConfig(max_new_tokens=10), keep_logits=True)
    fired_rows = {r for r, t in enumerate(res.traces) if t.consolidations}
    assert fired_rows and len(fired_rows) < 3 or len({tuple(t.consolidations) for t in res.traces}) > 1, \
        "the test needs rows that fire at different steps"
    latents = {step: lat for step, lat in res.latents}
    emb = model.get_input_embeddings()
    for r in range(3):
        pieces = [emb(ids[r, mask[r].bool()]), latents[-1][r]]
        predict_at = []  # index (in the recomputed sequence) whose logits chose each generated step
        for step, token in enumerate(res.tokens[r]):
            predict_at.append(sum(p.shape[0] for p in pieces) - 1)
            pieces.append(emb(torch.tensor([token])))
            if step in res.traces[r].consolidations:
                pieces.append(latents[step][r])
        full = recompute_logits(model, torch.cat(pieces))
        for step, index in enumerate(predict_at):
            assert torch.allclose(full[index], res.step_logits[step][r], atol=1e-4), (r, step)


@pytest.mark.parametrize("family", FAMILIES)
def test_training_path_nll_equals_generation_nll(family):
    model = tiny_model(family)
    bb = Backbone(model)
    g = torch.Generator().manual_seed(5)
    prompt, answer = torch.randint(3, 200, (9,), generator=g), torch.randint(3, 200, (30,), generator=g)
    memory = firing_memory(bb, threshold=2.0, min_gap=3)
    res = generate(bb, prompt[None], torch.ones(1, 9, dtype=torch.long), memory, forced=answer[None])
    found = find_insertions(bb, memory, prompt, answer)
    assert found.insertions == res.traces[0].consolidations and found.insertions
    scored = score_with_insertions(bb, memory, prompt, answer, found.insertions)
    assert abs(scored.nll.item() + res.logprobs.sum().item()) < 1e-4
    assert abs(found.nll.item() - scored.nll.item()) < 1e-4


@pytest.mark.parametrize("family", FAMILIES)
def test_backbone_frozen_and_only_memory_trains(family):
    model = tiny_model(family)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bb = Backbone(model)
    memory = firing_memory(bb)
    assert bb.frozen() and all(p.requires_grad for p in memory.parameters())
    names = {n for n, _ in memory.named_parameters()}
    assert not any("k_proj" in n or "v_proj" in n or "k_norm" in n for n in names)
    g = torch.Generator().manual_seed(6)
    prompt, answer = torch.randint(3, 200, (8,), generator=g), torch.randint(3, 200, (20,), generator=g)
    scored = score_with_insertions(bb, memory, prompt, answer, [5, 12])
    scored.nll.backward()
    assert all(p.grad is not None for p in memory.parameters())
    # seed.up sits behind the zero-initialised seed.down, so its first gradient is zero by design
    assert all(p.grad.abs().sum() > 0 for n, p in memory.named_parameters() if not n.startswith("seed.up"))
    assert all(p.grad is None for p in model.parameters())
    ids, mask = padded_batch(model.config.vocab_size)
    generate(bb, ids, mask, memory, GenerationConfig(max_new_tokens=6))
    assert bb.frozen()
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not model.model.layers[-1].self_attn._forward_pre_hooks  # the monitor's hook is gone


def test_rows_finish_independently_and_sampling_is_seeded():
    model = tiny_model("llama")
    bb = Backbone(model)
    ids, mask = padded_batch(model.config.vocab_size)
    greedy = generate(bb, ids, mask, None, GenerationConfig(max_new_tokens=8))
    eos = greedy.tokens[0][2]
    model.generation_config.eos_token_id = eos  # make row 0 stop at its third token
    stopped = generate(bb, ids, mask, None, GenerationConfig(max_new_tokens=8))
    assert stopped.tokens[0] == greedy.tokens[0][:3]
    assert all(len(t) == 8 for t, g in zip(stopped.tokens[1:], greedy.tokens[1:]) if eos not in g)
    model.generation_config.eos_token_id = None
    sample = GenerationConfig(max_new_tokens=8, temperature=0.9, top_p=0.9, seed=7)
    a, b = generate(bb, ids, mask, None, sample), generate(bb, ids, mask, None, sample)
    c = generate(bb, ids, mask, None, GenerationConfig(max_new_tokens=8, temperature=0.9, top_p=0.9, seed=8))
    assert a.tokens == b.tokens and a.tokens != c.tokens


def reference_latents(bb, memory, ctx):
    """The consolidator recomputed naively: at step i, every latent's key/value is made again from the stored
    inputs x_0..x_i with the source layer's own projections at positions p..p+i, heads repeated, plain sdpa."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    layer, source = memory.layers[0], bb.model.model.layers[-1].self_attn
    keys, values = bb.cache_kv(ctx.cache, bb.n_layers - 1)
    b, group, d = ctx.hidden.shape[0], bb.n_heads // bb.n_kv_heads, bb.head_dim
    x = memory.seed(ctx.hidden).unsqueeze(1)
    inputs, outputs = [], []
    for i in range(memory.config.num_latents):
        inputs.append(x)
        xs = torch.cat(inputs, 1)  # (B, i+1, d)
        positions = ctx.positions[:, None] + torch.arange(i + 1)[None]
        cos, sin = bb.model.model.rotary_emb(xs, position_ids=positions)
        normed = layer.input_layernorm(xs)
        k = source.k_proj(normed).view(b, i + 1, -1, d)
        k = (source.k_norm(k) if getattr(source, "k_norm", None) is not None else k).transpose(1, 2)
        v = source.v_proj(normed).view(b, i + 1, -1, d).transpose(1, 2)
        q = layer.self_attn.q_proj(normed).view(b, i + 1, -1, d)
        q = (layer.self_attn.q_norm(q) if getattr(layer.self_attn, "q_norm", None) is not None else q).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        all_k = torch.cat([keys, k], 2).repeat_interleave(group, 1)
        all_v = torch.cat([values, v], 2).repeat_interleave(group, 1)
        allowed = torch.cat([ctx.mask.bool(), torch.ones(b, i + 1, dtype=torch.bool)], 1)[:, None, None, :]
        att = torch.nn.functional.scaled_dot_product_attention(q[:, :, -1:], all_k, all_v, attn_mask=allowed,
                                                               scale=bb.scaling)
        x = x + layer.self_attn.o_proj(att.transpose(1, 2).reshape(b, 1, -1))
        x = x + layer.mlp(layer.post_attention_layernorm(x))
        outputs.append(memory.out_proj(memory.out_norm(x)))
    return memory.emit(torch.cat(outputs, 1), b)


def memory_context(bb, ids, mask):
    from flashmem.memory.base import MemoryContext

    state, _ = prefill(bb, ids, mask, 4)
    return MemoryContext(bb, state.cache, state.mask, state.positions, state.hidden, state.ids, state.ids_mask)


@pytest.mark.parametrize("family", FAMILIES)
def test_consolidator_steps_equal_a_reference_that_recomputes_keys_and_values(family):
    bb = Backbone(tiny_model(family))
    memory = firing_memory(bb, num_latents=4)
    with torch.no_grad():
        for p in memory.parameters():
            p.add_(torch.randn_like(p) * 0.02)  # trained-looking, every part of the step matters
        ctx = memory_context(bb, *padded_batch(bb.vocab_size, seed=7))
        torch.testing.assert_close(memory(ctx), reference_latents(bb, memory, ctx), atol=1e-5, rtol=1e-5)


def test_latents_depend_on_the_context():
    bb = Backbone(tiny_model("llama"))
    memory = firing_memory(bb, num_latents=3)
    ids, mask = padded_batch(bb.vocab_size, seed=8)
    other = ids.clone()
    other[:, -3:] = torch.randint(3, 200, (3, 3), generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        first, again = memory(memory_context(bb, ids, mask)), memory(memory_context(bb, ids, mask))
        changed = memory(memory_context(bb, other, mask))
    assert torch.equal(first, again)
    assert (changed - first).norm(dim=-1).min() > 1e-3  # every latent of every row moved


def test_finished_rows_leave_the_batch_without_changing_any_answer(monkeypatch):
    import flashmem.decoding.generation as generation

    model = tiny_model("llama")
    bb = Backbone(model)
    g = torch.Generator().manual_seed(11)
    ids = torch.randint(3, 250, (6, 10), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :3] = mask[4, :5] = 0
    ids = ids.masked_fill(mask == 0, 0)
    memory = firing_memory(bb, threshold=2.0)
    probe = generate(bb, ids, mask, memory, GenerationConfig(max_new_tokens=16, compact=False))
    model.generation_config.eos_token_id = probe.tokens[0][3]  # row 0 (and maybe others) stops early
    full = generate(bb, ids, mask, memory, GenerationConfig(max_new_tokens=16, compact=False))
    calls = []
    real = generation.select_rows
    monkeypatch.setattr(generation, "select_rows", lambda *a: calls.append(len(a[2])) or real(*a))
    compact = generate(bb, ids, mask, memory, GenerationConfig(max_new_tokens=16))
    assert calls and min(len(t) for t in full.tokens) < 16 == max(len(t) for t in full.tokens)
    assert compact.tokens == full.tokens
    for a, b in zip(full.traces, compact.traces):
        assert a.consolidations == b.consolidations and a.prompt_memory == b.prompt_memory
        assert a.tokens == b.tokens  # rows that left the batch go on with padding, as before
        n = len(b.entropy)  # a row's entropy stops when it leaves the batch
        assert n >= 3 and torch.allclose(torch.tensor(b.entropy), torch.tensor(a.entropy[:n]), atol=1e-5)


def test_length_normalised_entropy_is_the_raw_one_over_log_n_and_stays_consistent():
    torch.manual_seed(1)
    q, k = torch.randn(2, 4, 3, 8), torch.randn(2, 2, 9, 8)
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[0, :2] = 0
    sinks = sink_mask(mask, 2)
    causal = torch.arange(9)[None, :] <= torch.arange(6, 9)[:, None]  # the last 3 slots as queries
    visible = mask.bool()[:, None, :] & causal[None]
    raw = attention_entropy(q, k, visible, sinks, 0.35)
    norm = attention_entropy(q, k, visible, sinks, 0.35, normalize=True)
    n = (visible & ~sinks[:, None, :]).sum(-1).double()  # visible non-sink keys per query: row 0 has 2 pads
    assert n[0].tolist() == [3, 4, 5] and n[1].tolist() == [5, 6, 7]
    assert torch.allclose(norm.double(), raw.double() / n.log(), atol=1e-6) and norm.max() <= 1 + 1e-6
    # The normalised rule decodes and trains alike: the training path's NLL is generation's.
    bb = Backbone(tiny_model("qwen2"))
    memory = firing_memory(bb, entropy="normalized", threshold=0.5, min_gap=3)
    g = torch.Generator().manual_seed(12)
    prompt, answer = torch.randint(3, 200, (9,), generator=g), torch.randint(3, 200, (30,), generator=g)
    res = generate(bb, prompt[None], torch.ones(1, 9, dtype=torch.long), memory, forced=answer[None])
    found = find_insertions(bb, memory, prompt, answer)
    assert found.insertions == res.traces[0].consolidations and found.insertions
    assert abs(found.nll.item() + res.logprobs.sum().item()) < 1e-4
    assert all(0 <= e <= 1 for e in res.traces[0].entropy)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_consolidation_for_some_rows_runs_only_those_rows_and_changes_no_answer(family, monkeypatch):
    # forward_rows gives the firing rows the same numbers as a whole-batch forward (up to float
    # rounding) and the other rows masked slots, so decoding writes the same tokens either way.
    model = tiny_model(family)
    bb = Backbone(model)
    ids, mask = padded_batch(model.config.vocab_size, seed=3)
    memory = firing_memory(bb, threshold=2.0, budget=4)
    gen = GenerationConfig(max_new_tokens=16, compact=False)
    subsets = []  # rows each subset forward ran
    real = Backbone.forward_rows

    def counted(self, embeds, cache, positions, mask_, index):
        out = real(self, embeds, cache, positions, mask_, index)
        subsets.append(len(index) if out is not None else None)
        return out

    monkeypatch.setattr(Backbone, "forward_rows", counted)
    fast = generate(bb, ids, mask, memory, gen, keep_logits=True)
    monkeypatch.setattr(Backbone, "forward_rows", lambda *a: None)  # the whole-batch forward, as before
    whole = generate(bb, ids, mask, memory, gen, keep_logits=True)
    assert subsets and None not in subsets and max(subsets) < ids.shape[0]  # part of the batch, never the fallback
    assert fast.tokens == whole.tokens
    assert [t.consolidations for t in fast.traces] == [t.consolidations for t in whole.traces]
    assert torch.allclose(torch.stack(fast.step_logits), torch.stack(whole.step_logits), atol=1e-4)
