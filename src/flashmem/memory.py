"""What every latent memory is: a module that turns the decoding state into K latent vectors.

Also the memory folder: the trained weights (safetensors) and the MemoryConfig (JSON), checked
against the backbone on load. The three methods (flashmem, softprompt, memgen) plug in here.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from . import __version__
from .backbone import Backbone
from .config import MemoryConfig
from .errors import FlashmemError

WEIGHTS_NAME = "memory.safetensors"


@dataclass
class MemoryContext:
    """The decoding state a memory may read when it is asked for latents."""

    backbone: Backbone
    cache: object  # the live cache; read-only here
    mask: torch.Tensor  # (B, T) 1 for real cache slots
    positions: torch.Tensor  # (B,) position the first latent will take
    hidden: torch.Tensor  # (B, d) last-layer hidden state (after the final norm) of the newest token
    ids: torch.Tensor  # (B, T_ids) token ids so far, left-padded (MemGen's weaver re-reads them)
    ids_mask: torch.Tensor  # (B, T_ids)
    rows: torch.Tensor | None = None  # (B,) the cache's batch rows this context covers; None: all

    def cache_kv(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values (B, n_kv, T, D) of one cached layer, for this context's rows only."""
        keys, values = self.backbone.cache_kv(self.cache, layer)
        return (keys, values) if self.rows is None else (keys[self.rows], values[self.rows])

    def select(self, rows: torch.Tensor) -> MemoryContext:
        """The same state for the batch rows `rows` (R,) only; id columns padded in all of them are dropped."""
        ids_mask = self.ids_mask[rows]
        first = int(ids_mask.any(0).long().argmax())  # ids are left-padded: leading columns only
        cache_rows = rows if self.rows is None else self.rows[rows]
        return MemoryContext(self.backbone, self.cache, self.mask[rows], self.positions[rows], self.hidden[rows],
                             self.ids[rows, first:], ids_mask[:, first:], cache_rows)


def neutral_embedding(backbone: Backbone) -> torch.Tensor:
    """The embedding of the tokenizer's newline token (d,): what every memory starts from.

    Measured on SmolLM2-135M (24 GSM8K train answers, K=8 at the prompt end): eight newlines leave
    the answer NLL where it was (1.412 vs 1.421 without memory), while an untrained consolidator's
    output costs +0.18 nats/token and eight spread-out vocabulary rows +0.47. Starting every method
    from the same harmless latents means training only has to add what helps.
    """
    table = backbone.decoder.embed_tokens.weight.detach().float()
    tokenizer = backbone.tokenizer
    ids = tokenizer("\n", add_special_tokens=False).input_ids if tokenizer is not None else []
    return table[ids[-1]].clone() if ids else table.mean(0)


class LatentMemory(nn.Module):
    """Base class: subclasses define forward(ctx) -> (B, K, d) latents on the embedding scale.

    Every memory's latents are emit(delta) = anchor + delta, put on the embedding scale: `anchor`
    is K learned vectors that start as the newline embedding, and each method's delta (zero at
    initialisation) is what it computes from the context. The untrained memory is thus harmless,
    and the soft-prompt control (delta = 0) is exactly the context-free part of the others.
    """

    def __init__(self, backbone: Backbone, config: MemoryConfig):
        super().__init__()
        self.config = config
        # A list hides the backbone from nn.Module so its weights are never ours to save or train.
        self._backbone = [backbone]
        self.register_buffer("embed_scale", torch.tensor(backbone.embedding_norm()), persistent=False)
        self.anchor = nn.Parameter(neutral_embedding(backbone).repeat(config.num_latents, 1))

    def emit(self, delta: torch.Tensor | None, batch: int) -> torch.Tensor:
        """(B, K, d) latents: anchor + delta (delta (B, K, d) or None), on the embedding scale."""
        vectors = self.anchor.expand(batch, -1, -1) if delta is None else self.anchor.to(delta.dtype) + delta
        return self.to_embedding_scale(vectors)

    @property
    def backbone(self) -> Backbone:
        return self._backbone[0]

    def to_embedding_scale(self, vectors: torch.Tensor) -> torch.Tensor:
        """Put latents on the norm of real token embeddings so the frozen model sees familiar inputs."""
        norm = vectors.float().norm(dim=-1, keepdim=True).clamp_min(1e-6)
        return (vectors.float() / norm * self.embed_scale).to(vectors.dtype)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().contiguous() for k, v in self.named_parameters() if v.requires_grad}

    def save(self, folder: str | Path) -> None:
        """Write only what was trained, plus the config. Both files are replaced atomically."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{WEIGHTS_NAME}.tmp"
        save_file({k: v.float().cpu() for k, v in self.trainable_state().items()}, str(tmp))
        tmp.replace(folder / WEIGHTS_NAME)
        self.config.version = __version__
        self.config.save(folder)


def build_memory(backbone: Backbone, config: MemoryConfig) -> LatentMemory:
    """A fresh (untrained) memory of config.method for this backbone."""
    from .models import model_identity

    if not config.backbone:
        config.backbone = model_identity(backbone.model, backbone.name)
    if config.method == "flashmem":
        from .consolidator import Consolidator
        memory = Consolidator(backbone, config)
    elif config.method == "softprompt":
        from .softprompt import SoftPrompt
        memory = SoftPrompt(backbone, config)
    else:
        from .memgen import MemGenWeaver
        memory = MemGenWeaver(backbone, config)
    return memory.to(device=backbone.device, dtype=backbone.dtype)


def load_memory(folder: str | Path, backbone: Backbone) -> LatentMemory:
    """Load a memory folder, refusing one made for another backbone or with damaged weights."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FlashmemError(f"memory folder not found: {folder}")
    config = MemoryConfig.load(folder)
    problem = identity_mismatch(config.backbone, backbone)
    if problem:
        raise FlashmemError(f"memory {folder} was made for another backbone: {problem}")
    memory = build_memory(backbone, config)
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise FlashmemError(f"memory folder {folder} has no {WEIGHTS_NAME}")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as err:
        raise FlashmemError(f"corrupt memory weights {weights}: {err}") from None
    expected = memory.trainable_state()
    if set(state) != set(expected) or any(state[k].shape != expected[k].shape for k in state):
        raise FlashmemError(f"memory weights {weights} do not match a {config.method} memory for this backbone")
    memory.load_state_dict(state, strict=False)
    return memory


def identity_mismatch(saved: dict, backbone: Backbone) -> str:
    """'' when the saved identity matches the backbone, else what differs (field: saved vs now)."""
    from .models import model_identity

    now = model_identity(backbone.model, backbone.name)
    keys = [k for k in saved if k != "name"] or list(now)
    diffs = [f"{k}: {saved.get(k)!r} vs {now.get(k)!r}" for k in keys if saved.get(k) != now.get(k)]
    if diffs and saved.get("name") != now.get("name"):
        diffs.insert(0, f"name: {saved.get('name')!r} vs {now.get('name')!r}")
    return "; ".join(diffs)
