"""Stored architectures with random weights (`random:NAME`): published shapes, the byte tokenizer,
one-pass init, and the load_backbone hook. Full sizes are built on the meta device (no memory);
forwards run on scaled-down variants."""
import pytest
import torch

from flashmem.config import GenerationConfig
from flashmem.data.prompts import format_prompt
from flashmem.decoding.generation import generate
from flashmem.errors import FlashmemError
from flashmem.models.architectures import ARCHITECTURES, build_random, byte_tokenizer, random_config
from flashmem.models.backbone import Backbone, model_identity
from flashmem.models.loader import load_backbone, load_model

# Model cards' counts (total, non-embedding; None where the card gives none).
PUBLISHED = {
    "qwen2.5-1.5b": (1.54e9, 1.31e9),
    "qwen2.5-7b": (7.61e9, 6.53e9),
    "llama3.2-3b": (3.21e9, None),
    "qwen3-4b": (4.0e9, 3.6e9),
    "smollm2-135m": (135e6, None),
    # The card's 0.49B ties the head; the alias's GGUF has its own (+136M), and so does this entry.
    "qwen2.5-coder-0.5b": (0.63e9, 0.36e9),
}
# Small enough for a CPU forward in milliseconds; head_dim set for the families that store it.
TINY = dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=512)


def tiny(name, **extra):
    overrides = dict(TINY, **extra)
    if "head_dim" in ARCHITECTURES[name].config:
        overrides["head_dim"] = 16
    return build_random(name, dtype=torch.float32, **overrides)


def test_every_published_architecture_is_stored():
    assert set(ARCHITECTURES) == set(PUBLISHED)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_full_size_on_meta_has_the_published_parameter_count(name):
    model, _ = build_random(name, device="meta")
    assert all(p.device.type == "meta" for p in model.parameters())
    total = sum(p.numel() for p in model.parameters())
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    non_embedding = total - embed.numel() - (0 if head is embed else head.numel())
    published_total, published_non_embedding = PUBLISHED[name]
    assert abs(total / published_total - 1) < 0.03, f"{name}: {total:,}"
    if published_non_embedding:
        assert abs(non_embedding / published_non_embedding - 1) < 0.03, f"{name}: {non_embedding:,}"
    assert (head is embed) == ARCHITECTURES[name].config["tie_word_embeddings"]
    assert model.dtype == torch.bfloat16


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_config_keeps_the_published_fields(name):
    arch = ARCHITECTURES[name]
    config = random_config(name)
    rope = dict(config.rope_parameters)
    for key, value in arch.config.items():
        if key == "rope_theta":
            assert rope["rope_theta"] == value
        elif key == "rope_scaling":
            assert {k: rope[k] for k in value} == value
        elif key in arch.overrides:
            continue
        else:
            assert getattr(config, key) == value, key
    for key, value in arch.overrides.items():
        assert getattr(config, key) == value


def test_qwen25_15b_allows_a_64k_context():
    assert random_config("qwen2.5-1.5b").max_position_embeddings >= 65536


def test_llama32_keeps_its_llama3_rope_scaling():
    rope = random_config("llama3.2-3b").rope_parameters
    assert rope["rope_type"] == "llama3" and rope["factor"] == 32.0
    assert rope["original_max_position_embeddings"] == 8192


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_scaled_down_variant_runs_a_forward_on_cpu(name):
    model, tok = tiny(name)
    assert model.config.model_type == ARCHITECTURES[name].config["model_type"]
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    prompts = [format_prompt(tok, "What is 2 + 3?"), format_prompt(tok, "Hi")]
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    assert (enc.input_ids[1, 0] == tok.pad_token_id) and (enc.attention_mask[1, 0] == 0)  # left padding
    with torch.no_grad():
        logits = model(**enc).logits
    assert logits.shape == (2, enc.input_ids.shape[1], TINY["vocab_size"])
    assert torch.isfinite(logits).all()


def test_engine_generates_with_a_random_architecture():
    model, tok = tiny("qwen2.5-1.5b")
    bb = Backbone(model, tok, name="random:qwen2.5-1.5b")
    enc = tok([format_prompt(tok, "Count to three.")], return_tensors="pt", add_special_tokens=False)
    out = generate(bb, enc.input_ids, enc.attention_mask, None, GenerationConfig(max_new_tokens=5, use_memory=False))
    assert len(out.tokens[0]) == 5 and all(0 <= t < TINY["vocab_size"] for t in out.tokens[0])


def test_one_initialisation_matches_transformers_defaults_and_is_seeded():
    model, _ = tiny("qwen2.5-1.5b", vocab_size=4096, hidden_size=256, intermediate_size=512)
    std = model.config.initializer_range
    attn = model.model.layers[0].self_attn
    assert abs(float(attn.q_proj.weight.std()) / std - 1) < 0.05
    assert abs(float(model.get_input_embeddings().weight.std()) / std - 1) < 0.05
    assert torch.all(attn.q_proj.bias == 0) and torch.all(model.model.norm.weight == 1)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    again, _ = tiny("qwen2.5-1.5b", vocab_size=4096, hidden_size=256, intermediate_size=512)
    other, _ = build_random("qwen2.5-1.5b", dtype=torch.float32, seed=1, **dict(
        TINY, vocab_size=4096, hidden_size=256, intermediate_size=512))
    assert torch.equal(model.model.layers[1].mlp.up_proj.weight, again.model.layers[1].mlp.up_proj.weight)
    assert not torch.equal(model.model.layers[1].mlp.up_proj.weight, other.model.layers[1].mlp.up_proj.weight)


def test_model_identity_works_on_a_random_architecture():
    model, _ = tiny("llama3.2-3b")
    identity = model_identity(model, "random:llama3.2-3b")
    assert identity["model_type"] == "llama" and len(identity["fingerprint"]) == 16
    assert model_identity(tiny("llama3.2-3b")[0], "random:llama3.2-3b") == identity


def test_byte_tokenizer_round_trips_and_applies_chatml():
    tok = byte_tokenizer()
    text = "Ünïcode, tabs\tand\nnewlines: 12 + 30 = 42. 日本語 \x00"
    ids = tok(text, add_special_tokens=False).input_ids
    assert ids == list(text.encode("utf-8"))  # id b is byte b
    assert tok.decode(ids) == text
    assert len(tok) == 260 and tok.padding_side == "left"
    assert tok.convert_ids_to_tokens([256, 257, 258, 259]) == ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|pad|>"
    chat = tok.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        tokenize=False, add_generation_prompt=True,
    )
    assert chat == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert tok(chat, add_special_tokens=False).input_ids[0] == 257  # a special is one token
    assert tok.decode([72, 105, 100_000]) == "Hi"  # ids of the model's larger vocabulary decode to nothing


def test_config_special_ids_are_the_tokenizers():
    tok = byte_tokenizer()
    config = random_config("qwen3-4b", tok)
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (256, 258, 259)


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(FlashmemError, match="qwen2.5-1.5b.*smollm2-135m"):
        build_random("gpt-5", device="meta")
    with pytest.raises(FlashmemError, match="unknown architecture"):
        load_backbone("random:nope")


def test_load_backbone_routes_random_specs(monkeypatch):
    import flashmem.models.loader as loader

    seen = {}

    def fake_build(name, **kwargs):
        seen.update(kwargs, name=name)
        return "model", "tokenizer"

    monkeypatch.setattr(loader, "build_random", fake_build)
    assert load_model("random:Qwen2.5-1.5B", dtype="bfloat16") == ("model", "tokenizer")
    assert seen["name"] == "random:Qwen2.5-1.5B" and seen["dtype"] == torch.bfloat16
    assert seen["device"] == torch.device("cuda" if torch.cuda.is_available() else "cpu")
