"""The frozen backbone: the one module that names transformers' modules, attributes and cache classes.

Everything else in flashmem sees tensors and the few named operations defined here: embed, forward
on a cache (with the last layer's query for the monitor), cached keys/values, rotary tables, a copy
of a decoder layer without K/V projections and its one step, the LoRA sites MemGen adapts, the
vocabulary, the stop ids and the identity fingerprint. A transformers upgrade or a new family
breaks this file and `tests/test_backbone.py`, nothing else.
Supported layout (Llama, Qwen2, Qwen3, Mistral): model.model.{embed_tokens, layers, norm, rotary_emb},
layers[i].{input_layernorm, self_attn.{q,k,v,o}_proj[, q_norm, k_norm], post_attention_layernorm, mlp},
model.lm_head.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import nn
from transformers import DynamicCache, StaticCache
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer, StaticLayer

from ..errors import FlashmemError

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3", "mistral")
# MemGen's weaver adapts these attention projections with LoRA (its released setting: q and v).
LORA_TARGETS = ("q_proj", "v_proj")
# A consolidator that writes its latents at every layer (MemoryConfig.write_lora_r) adapts these.
WRITE_TARGETS = ("k_proj", "v_proj")
# A layer copy that reads the frozen cache must not make keys/values of its own.
_KV_PARTS = ("k_proj", "v_proj", "k_norm")
# Cache layers whose rows forward_rows may run apart: plain growing ones and sliding windows.
_ROW_LAYERS = (DynamicLayer, DynamicSlidingWindowLayer)
_FORCE_GQA = "TRANSFORMERS_SDPA_FORCE_GQA"  # transformers' switch (integrations/sdpa_attention.py)


@dataclass
class StepOutput:
    """What one backbone forward returns to the engine."""

    logits: torch.Tensor  # (B, Q or 1, V)
    hidden: torch.Tensor  # (B, Q, d) last-layer hidden state after the final norm
    query: torch.Tensor | None  # (B, H, Q, D) last layer's query after RoPE, when asked for


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, heads, Q, D); cos/sin: (B, Q, D)."""
    return x * cos.unsqueeze(1) + rotate_half(x) * sin.unsqueeze(1)


def check_layout(model: nn.Module) -> None:
    """Refuse a model whose modules are not the supported decoder layout, naming what is missing."""
    model_type = getattr(model.config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise FlashmemError(f"model type {model_type!r} is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
    inner = getattr(model, "model", None)
    needed = {"model.model": inner, "lm_head": getattr(model, "lm_head", None)}
    for name in ("embed_tokens", "layers", "norm", "rotary_emb"):
        needed[f"model.model.{name}"] = getattr(inner, name, None)
    layer = inner.layers[-1] if getattr(inner, "layers", None) else None
    for name in ("input_layernorm", "self_attn", "post_attention_layernorm", "mlp"):
        needed[f"layers[-1].{name}"] = getattr(layer, name, None)
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        needed[f"layers[-1].self_attn.{name}"] = getattr(getattr(layer, "self_attn", None), name, None)
    missing = [name for name, module in needed.items() if module is None]
    if missing:
        raise FlashmemError(f"{model_type} model does not have the supported decoder layout: missing {', '.join(missing)}")


class Backbone:
    """A frozen causal LM seen through the few operations FlashMem needs. Never changes the model."""

    def __init__(self, model: nn.Module, tokenizer=None, name: str = "model"):
        check_layout(model)
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self._decoder = model.model
        config = model.config
        attn = self._decoder.layers[-1].self_attn
        self.n_layers = len(self._decoder.layers)
        self.n_heads = config.num_attention_heads
        self.n_kv_heads = getattr(config, "num_key_value_heads", None) or self.n_heads
        self.head_dim = attn.head_dim
        self.scaling = attn.scaling
        self.hidden_size = config.hidden_size
        self.vocab_size = config.vocab_size
        self.model_type = config.model_type
        self.max_positions = int(getattr(config, "max_position_embeddings", None) or 1 << 30)
        self.patch_depth = 0  # > 0 while `patched` has modules swapped in: forwards then differ from the plain model's
        # The last attention layer's input, caught by one pre-hook: the monitor's query is projected from it.
        # Hook, store and traceable step stay the same objects for the backbone's (and its proxies') life, so
        # a graph compiled over them is reused (torch.compile guards on the objects it reads).
        self._captured: dict = {"hidden_states": None, "position_embeddings": None}
        self._query_hook = _capture_attention_input(self._captured)
        self._traceable_step = self._make_traceable_step()

    @property
    def device(self) -> torch.device:
        return self._decoder.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self._decoder.embed_tokens.weight.dtype

    def frozen(self) -> bool:
        return not any(p.requires_grad for p in self.model.parameters())

    def parameter_ids(self) -> set[int]:
        """ids of every backbone parameter: nothing among them may reach an optimiser."""
        return {id(p) for p in self.model.parameters()}

    # ---- tokens ---------------------------------------------------------------------------------
    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self._decoder.embed_tokens(ids)

    def embedding_matrix(self) -> torch.Tensor:
        """The token embeddings (V, d), frozen."""
        return self._decoder.embed_tokens.weight

    def embedding_norm(self) -> float:
        """Mean L2 norm of the token embeddings: the scale latents are put on."""
        return float(self._decoder.embed_tokens.weight.detach().float().norm(dim=-1).mean())

    def text_embedding(self, text: str) -> torch.Tensor:
        """(d,) float32 copy of the embedding of text's last token (the mean row without a tokenizer)."""
        table = self._decoder.embed_tokens.weight.detach().float()
        ids = self.tokenizer(text, add_special_tokens=False).input_ids if self.tokenizer is not None else []
        return table[ids[-1]].clone() if ids else table.mean(0)

    def stop_ids(self) -> list[int]:
        """Token ids that end an answer (config, generation config and tokenizer EOS), sorted.

        Read at each call (once per generate), so a changed generation config takes effect."""
        return _stop_ids(self.model, self.tokenizer)

    def pad_id(self) -> int:
        if self.tokenizer is not None and self.tokenizer.pad_token_id is not None:
            return self.tokenizer.pad_token_id
        return min(self.stop_ids() or [0])

    # ---- cache ----------------------------------------------------------------------------------
    def new_cache(self, max_len: int | None = None) -> DynamicCache | StaticCache:
        """A growing cache, or with max_len one preallocated for that many positions (transformers'
        StaticCache: each step writes in place instead of copying every layer's keys and values)."""
        if max_len is None:
            return DynamicCache(config=self.model.config)
        return StaticCache(config=self.model.config, max_cache_len=max_len)

    @staticmethod
    def cache_kv(cache: DynamicCache, layer_index: int, filled: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached keys/values of one layer, (B, n_kv, T, D), keys already rotated, the T slots filled so far
        (a view of a preallocated cache's buffers). No copy. filled: T when the caller knows it on the host
        (a preallocated cache keeps it on the device, where reading it would wait for the GPU)."""
        layer = cache.layers[layer_index]
        if isinstance(layer, StaticLayer):
            filled = int(layer.cumulative_length) if filled is None else filled
            return layer.keys[:, :, :filled], layer.values[:, :, :filled]
        return layer.keys, layer.values

    @staticmethod
    def cache_capacity(cache: DynamicCache) -> int | None:
        """Slots a preallocated cache holds (None: a growing cache)."""
        layers = cache.layers
        return layers[0].max_cache_len if layers and all(isinstance(layer, StaticLayer) for layer in layers) else None

    @staticmethod
    def clone_cache(cache: DynamicCache) -> DynamicCache:
        """An independent copy (every layer's keys and values copied), so two decodings can grow from one prefill."""
        return copy.deepcopy(cache)

    @staticmethod
    def cache_length(cache: DynamicCache) -> int:
        return int(cache.get_seq_length())  # a preallocated cache keeps its length in a tensor

    @staticmethod
    def select_rows(cache: DynamicCache, rows: torch.Tensor) -> None:
        """Keep only the batch rows `rows` (R,) of every layer, in that order."""
        if not any(isinstance(layer, StaticLayer) for layer in cache.layers):
            cache.batch_select_indices(rows)
            return
        for layer in cache.layers:  # transformers' static layers cannot drop rows themselves
            if layer.is_initialized:
                layer.keys, layer.values = layer.keys[rows], layer.values[rows]
                layer.batch_size = int(rows.numel())

    @staticmethod
    def extend_cache(cache: DynamicCache, keys: list[torch.Tensor], values: list[torch.Tensor]) -> None:
        """Append given entries to every layer: keys[i], values[i] (B, n_kv, K, D), keys already rotated.

        Memory handed to the model as keys/values at every layer rather than as input embeddings; the
        entries keep their autograd history, so they can be optimised through the frozen model."""
        if len(keys) != len(cache.layers) or len(values) != len(cache.layers):
            raise FlashmemError(f"extend_cache needs one key and one value tensor per layer ({len(cache.layers)}), "
                                f"got {len(keys)} and {len(values)}")
        for layer, k, v in zip(cache.layers, keys, values):
            layer.update(k, v)

    @staticmethod
    def crop(cache: DynamicCache, keep: int) -> None:
        """Keep the first `keep` positions of every layer."""
        drop = int(cache.get_seq_length()) - keep
        if drop > 0:
            cache.crop(-drop)

    # ---- forward --------------------------------------------------------------------------------
    def forward(
        self, embeds: torch.Tensor, cache: DynamicCache, positions: torch.Tensor, mask: torch.Tensor,
        want_query: bool = False, all_logits: bool = False,
    ) -> StepOutput:
        """Run embeds (B, Q, d) at positions (B, Q) on top of the cache; mask (B, T_cache + Q) marks real slots.

        With want_query the last layer's query is captured by a pre-hook on its attention (the hook
        sees the normed input and the rotary tables that layer used), so the monitor needs no eager
        attention anywhere. The hook is removed on every exit path.
        """
        attn = self._decoder.layers[-1].self_attn
        handle = attn.register_forward_pre_hook(self._query_hook, with_kwargs=True) if want_query else None
        try:
            with _grouped_heads_on_cpu(embeds.device):
                out = self._decoder(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, cache=cache,
                                    use_cache=True)
        finally:
            if handle is not None:
                handle.remove()
        hidden = out.last_hidden_state
        logits = self.model.lm_head(hidden if all_logits else hidden[:, -1:])
        return StepOutput(logits=logits, hidden=hidden, query=self._captured_query() if want_query else None)

    def _captured_query(self) -> torch.Tensor:
        """The last layer's query (B, H, Q, D) from the input the hook caught; the store is emptied, so every
        forward (and every compiled step) starts from the same contents."""
        normed, (cos, sin) = self._captured["hidden_states"], self._captured["position_embeddings"]
        self._captured["hidden_states"] = self._captured["position_embeddings"] = None
        return _project_query(self._decoder.layers[-1].self_attn, normed, cos, sin, self.head_dim)

    @contextmanager
    def traceable_forward(self) -> Iterator[Callable[..., StepOutput]]:
        """forward(embeds, cache, positions, mask) with the last layer's query, for torch.compile.

        forward() registers the query hook and sets the CPU grouped-heads switch at every call, and
        neither can be traced: here both are done once, around the caller's whole decoding, and the
        function handed out only runs the model, so a compiled step holds it in one graph."""
        handle = self._decoder.layers[-1].self_attn.register_forward_pre_hook(self._query_hook, with_kwargs=True)
        try:
            with _grouped_heads_on_cpu(self.device):
                yield self._traceable_step
        finally:
            handle.remove()

    def _make_traceable_step(self) -> Callable[..., StepOutput]:
        def step(embeds: torch.Tensor, cache, positions: torch.Tensor, mask: torch.Tensor) -> StepOutput:
            out = self._decoder(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, cache=cache,
                                use_cache=True)
            hidden = out.last_hidden_state
            return StepOutput(logits=self.model.lm_head(hidden[:, -1:]), hidden=hidden, query=self._captured_query())
        return step

    def library_generate(self, ids: torch.Tensor, mask: torch.Tensor, new_tokens: int, compiled: bool,
                         first_step: Callable[[], None]) -> torch.Tensor:
        """transformers' own greedy `generate` of exactly new_tokens tokens (B, new_tokens) on its static cache,
        compiled as transformers compiles it when `compiled` (its CompileConfig, allowed on the CPU too): the
        decoding a user would pick instead of flashmem. first_step() runs when the prompt's forward is done
        (at the first token's logits), so a caller can time the decoding apart from the prefill."""
        from transformers import CompileConfig, LogitsProcessor, LogitsProcessorList

        class FirstStep(LogitsProcessor):
            def __init__(self):
                self.seen = False

            def __call__(self, input_ids, scores):
                if not self.seen:
                    self.seen = True
                    first_step()
                return scores
        config = CompileConfig(fullgraph=True, dynamic=False) if compiled else None
        if config is not None and self.device.type != "cuda":
            config._compile_all_devices = True  # transformers compiles only on accelerators unless told so
        out = self.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens,
                                  min_new_tokens=new_tokens, do_sample=False, cache_implementation="static",
                                  compile_config=config, disable_compile=not compiled,
                                  logits_processor=LogitsProcessorList([FirstStep()]),
                                  pad_token_id=self.pad_id())
        return out[:, ids.shape[1]:]

    def forward_rows(self, embeds: torch.Tensor, cache: DynamicCache, positions: torch.Tensor, mask: torch.Tensor,
                     index: torch.Tensor) -> StepOutput | None:
        """forward() computed for the batch rows `index` (R,) only; the other rows' Q new slots hold zeros
        (their mask must mark them unreal, so nothing reads them). Arguments are the whole batch's; the
        cache grows by Q slots for every row.

        A consolidation that fires for one row of 48 would otherwise run all 48 through every layer.
        Outputs are (B, ...) with zeros outside `index`. None when a layer is another kind (quantized,
        static, indexed): the caller runs the whole batch instead."""
        layers = cache.layers
        if not layers or any(type(layer) not in _ROW_LAYERS or not layer.is_initialized for layer in layers):
            return None
        part = copy.copy(cache)  # same settings; its own layer objects over the selected rows' copies
        part.layers = []
        for layer in layers:
            piece = copy.copy(layer)  # a sliding window's length and size come along
            piece.keys, piece.values = layer.keys[index], layer.values[index]
            part.layers.append(piece)
        out = self.forward(embeds[index], part, positions[index], mask[index])
        q, b = embeds.shape[1], embeds.shape[0]
        for layer, piece in zip(layers, part.layers):  # update(): each layer type appends (and slides) its own way
            layer.update(_rows_into(piece.keys[:, :, -q:], index, b), _rows_into(piece.values[:, :, -q:], index, b))
        return StepOutput(logits=_rows_into(out.logits, index, b), hidden=_rows_into(out.hidden, index, b), query=None)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The LM head on hidden states (..., d) taken after the final norm (StepOutput.hidden): a caller
        that needs a few positions' logits pays for those only."""
        return self.model.lm_head(hidden)

    def rotary(self, like: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin for positions (B, Q): (B, Q, D) in like's dtype."""
        return self._decoder.rotary_emb(like, position_ids=positions)

    # ---- a decoder layer without K/V projections (the Shared-KV Consolidator) -------------------
    def shared_kv_copy(self, index: int) -> nn.Module:
        """Deep copy of decoder layer `index` without K/V projections (and k_norm); every weight trainable."""
        clone = copy.deepcopy(self._decoder.layers[index])
        for name in _KV_PARTS:
            if hasattr(clone.self_attn, name):
                setattr(clone.self_attn, name, None)
        return clone.requires_grad_(True)

    def final_norm_copy(self) -> nn.Module:
        """Trainable copy of the final norm (the latents leave on the scale the LM head reads)."""
        return copy.deepcopy(self._decoder.norm).requires_grad_(True)

    def latent_qkv(self, copy_layer: nn.Module, source: int, x: torch.Tensor, cos, sin):
        """One latent step's attention inputs for x (B, 1, d): the copy's trained query (B, H, 1, D) and
        key/value (B, n_kv, 1, D) from source layer `source`'s frozen projections, as its cache holds them."""
        normed = copy_layer.input_layernorm(x)
        query = _project_query(copy_layer.self_attn, normed, cos, sin, self.head_dim)
        keys, values = _project_kv(self._decoder.layers[source].self_attn, normed, cos, sin, self.head_dim)
        return query, keys, values

    @staticmethod
    def finish_layer(copy_layer: nn.Module, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        """The rest of the decoder layer after attention: output projection, residuals and MLP."""
        x = x + copy_layer.self_attn.o_proj(attended)
        return x + copy_layer.mlp(copy_layer.post_attention_layernorm(x))

    # ---- MemGen's LoRA sites on the live model ----------------------------------------------------
    def lora_sites(self, targets: tuple[str, ...] = LORA_TARGETS) -> dict[str, dict[str, nn.Module]]:
        """{layer index: {projection name: the live module}} for the target projections in every layer."""
        return {str(i): {name: getattr(layer.self_attn, name) for name in targets}
                for i, layer in enumerate(self._decoder.layers)}

    @contextmanager
    def patched(self, replacements: dict[tuple[str, str], nn.Module]) -> Iterator[None]:
        """Swap {(layer index, projection name): module} into the live model, restoring on every exit path."""
        originals = {key: getattr(self._decoder.layers[int(key[0])].self_attn, key[1]) for key in replacements}
        self.patch_depth += 1
        try:
            for (layer, name), module in replacements.items():
                setattr(self._decoder.layers[int(layer)].self_attn, name, module)
            yield
        finally:
            for (layer, name), module in originals.items():
                setattr(self._decoder.layers[int(layer)].self_attn, name, module)
            self.patch_depth -= 1

    # ---- identity -------------------------------------------------------------------------------
    def identity(self) -> dict[str, Any]:
        """Architecture summary plus a 16-hex fingerprint of config and a few weight slices."""
        return model_identity(self.model, self.name)


def _rows_into(rows: torch.Tensor, index: torch.Tensor, b: int) -> torch.Tensor:
    """A (B, ...) tensor of zeros with `rows` (R, ...) at batch rows `index`."""
    return rows.new_zeros(b, *rows.shape[1:]).index_copy(0, index, rows)


def _project_query(attn: nn.Module, normed: torch.Tensor, cos, sin, head_dim: int) -> torch.Tensor:
    """(B, Q, d) normed input -> (B, H, Q, D) rotated query, as attn itself computes it."""
    b, q, _ = normed.shape
    query = attn.q_proj(normed).view(b, q, -1, head_dim)
    if getattr(attn, "q_norm", None) is not None:
        query = attn.q_norm(query)
    return apply_rope(query.transpose(1, 2), cos, sin)


def _project_kv(attn: nn.Module, normed: torch.Tensor, cos, sin, head_dim: int):
    """(B, Q, d) normed input -> keys, values (B, n_kv, Q, D), keys rotated, as the cache holds them."""
    b, q, _ = normed.shape
    keys = attn.k_proj(normed).view(b, q, -1, head_dim)
    if getattr(attn, "k_norm", None) is not None:
        keys = attn.k_norm(keys)
    values = attn.v_proj(normed).view(b, q, -1, head_dim).transpose(1, 2)
    return apply_rope(keys.transpose(1, 2), cos, sin), values


@contextmanager
def _grouped_heads_on_cpu(device: torch.device) -> Iterator[None]:
    """Let sdpa read grouped K/V heads as they are when a mask is passed, on the CPU.

    With a mask (latent slots, padded batches) transformers otherwise repeats every K/V head, copying
    the whole cache in every layer; torch's CPU kernels take grouped heads with a mask (measured on
    SmolLM2 at 4k context: the 8 latent slots' forward 371 -> 265 ms, same numbers). On CUDA a mask
    with grouped heads would fall back to the math kernel, so there transformers' own choice stands.
    transformers reads this switch at each call.
    """
    if device.type != "cpu" or _FORCE_GQA in os.environ:
        yield
        return
    os.environ[_FORCE_GQA] = "1"
    try:
        yield
    finally:
        os.environ.pop(_FORCE_GQA, None)


def _capture_attention_input(store: dict):
    def hook(module, args, kwargs):
        if "position_embeddings" not in kwargs:
            raise FlashmemError(
                "unsupported architecture or transformers version: the last attention layer was not given "
                "`position_embeddings` as a keyword, so the monitor cannot read its query")
        store["hidden_states"] = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        store["position_embeddings"] = kwargs["position_embeddings"]
    return hook


def _stop_ids(model: nn.Module, tokenizer) -> list[int]:
    ids: set[int] = set()
    for source in (model.config, getattr(model, "generation_config", None)):
        eos = getattr(source, "eos_token_id", None) if source is not None else None
        if eos is not None:
            ids.update(eos if isinstance(eos, (list, tuple)) else [eos])
    if tokenizer is not None and tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(ids)


# Config fields that define the architecture (and so what a trained memory can attach to).
_IDENTITY_FIELDS = (
    "model_type", "hidden_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "intermediate_size", "vocab_size",
    "max_position_embeddings", "rms_norm_eps", "rope_theta", "rope_parameters",
    "tie_word_embeddings", "attention_bias",
)


def _weight_sample(tensor: torch.Tensor, n: int = 64) -> bytes:
    # Rounded through bf16 so a float32 and a bfloat16 load of one checkpoint agree.
    flat = tensor.detach().reshape(-1)[:n]
    return flat.to(torch.bfloat16).to(torch.float32).cpu().numpy().tobytes()


def model_identity(model: nn.Module, name: str) -> dict[str, Any]:
    """Architecture summary plus a 16-hex fingerprint of config and a few weight slices."""
    config = model.config
    n_heads = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_heads
    arch = {field: getattr(config, field, None) for field in _IDENTITY_FIELDS}
    arch["num_key_value_heads"] = n_kv
    digest = hashlib.sha256(json.dumps(arch, sort_keys=True, default=str).encode())
    for tensor in (
        model.get_input_embeddings().weight,
        model.model.layers[-1].self_attn.q_proj.weight,
        model.model.norm.weight,
        model.get_output_embeddings().weight[-1],  # last row: differs from the embedding's first
    ):
        digest.update(_weight_sample(tensor))
    return {
        "name": name, "model_type": config.model_type, "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_hidden_layers, "num_attention_heads": n_heads,
        "num_key_value_heads": n_kv, "vocab_size": config.vocab_size, "fingerprint": digest.hexdigest()[:16],
    }


def max_context(model: nn.Module) -> int:
    """Longest sequence (prompt + memory + answer) the model's positions cover."""
    value = getattr(model.config, "max_position_embeddings", None)
    if not value:
        raise FlashmemError("the model's config has no max_position_embeddings")
    return int(value)
