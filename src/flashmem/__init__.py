"""flashmem: FlashMem latent memory for frozen Hugging Face causal LMs."""
from .api import Answer, FlashMem
from .config import GenerationConfig, MemoryConfig
from .errors import FlashmemError
from .version import __version__

__all__ = ["Answer", "FlashMem", "FlashmemError", "GenerationConfig", "MemoryConfig", "__version__"]
