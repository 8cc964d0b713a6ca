"""flashmem: FlashMem latent memory for frozen Hugging Face causal LMs."""
__version__ = "0.1.0"

from .api import Answer, FlashMem  # noqa: E402
from .config import GenerationConfig, MemoryConfig  # noqa: E402
from .errors import FlashmemError  # noqa: E402

__all__ = ["Answer", "FlashMem", "FlashmemError", "GenerationConfig", "MemoryConfig", "__version__"]
