"""flashmem: FlashMem latent memory for frozen Hugging Face causal LMs.

The public surface, importable from the top (`from flashmem import FlashMem, TrainConfig, train`):
the `FlashMem` wrapper, the config dataclasses, the four jobs with their configs, and loading.
The inner sub-packages (models, data, memory, decoding, training, evaluation, cli, integrations)
are for readers and extenders; nothing a user writes needs their paths.
"""
from .api import Answer, FlashMem
from .config import GenerationConfig, MemoryConfig, ModelOptions
from .errors import FlashmemError
from .evaluation.bench import BenchConfig, bench
from .evaluation.evaluate import EvalConfig, evaluate, evaluate_together
from .memory.registry import load_memory
from .models.loader import load_backbone
from .training.calibrate import CalibrateConfig, calibrate
from .training.train import TrainConfig, train
from .version import __version__

__all__ = [
    "Answer", "BenchConfig", "CalibrateConfig", "EvalConfig", "FlashMem", "FlashmemError", "GenerationConfig",
    "MemoryConfig", "ModelOptions", "TrainConfig", "__version__", "bench", "calibrate", "evaluate",
    "evaluate_together", "load_backbone", "load_memory", "train",
]
