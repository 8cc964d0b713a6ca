"""LoRA adapters on the backbone's live attention projections, swapped in only while a memory uses them.

MemGen's weaver adapts q/v while it re-encodes the context; a consolidator with write_lora_r > 0
adapts k/v while its latents are written into the cache (flashmem's own extension). Either way PEFT
wraps the shared base modules inside a throwaway holder, so the backbone's module tree never changes,
and `Backbone.patched` puts the wrappers in place only for the duration of a `with` block.
"""
from __future__ import annotations

from peft import LoraConfig, inject_adapter_in_model
from torch import nn

from ..models.backbone import Backbone


def lora_wrappers(backbone: Backbone, r: int, alpha: int, targets: tuple[str, ...]) -> dict[tuple[str, str], nn.Module]:
    """{(layer index, projection name): PEFT LoRA layer around the live projection} for every layer."""
    sites = backbone.lora_sites(targets)
    holder = nn.ModuleDict({i: nn.ModuleDict(site) for i, site in sites.items()})
    names = sorted({name for site in sites.values() for name in site})
    lora = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=names)
    inject_adapter_in_model(lora, holder)
    return {(i, name): wrapper for i, site in holder.items() for name, wrapper in site.items()}


def adapter_parameters(wrappers: dict[tuple[str, str], nn.Module]) -> nn.ModuleDict:
    """Only the adapter matrices, as {layer: {projection: {lora_A, lora_B}}}: what trains, saves and loads
    (the shared base weights never become a memory's parameters)."""
    out = nn.ModuleDict()
    for (i, name), wrapper in wrappers.items():
        if i not in out:
            out[i] = nn.ModuleDict()
        out[i][name] = nn.ModuleDict({"lora_A": wrapper.lora_A, "lora_B": wrapper.lora_B})
    return out
