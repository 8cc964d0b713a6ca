"""Latent memories: the interface every method implements (base), FlashMem's Shared-KV
Consolidator, MemGen's LoRA weaver, the static soft prompt, and the registry that builds, saves and
loads memory folders. Imports models/ only (and the top-level shared modules)."""
