"""flashmem: FlashMem latent memory for frozen Hugging Face causal LMs."""
__version__ = "0.1.0"
