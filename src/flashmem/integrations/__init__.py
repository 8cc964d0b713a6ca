"""Bridges to tools outside flashmem, each behind its optional extra: `flashmem.integrations.lm_eval`
(EleutherAI's lm-evaluation-harness, `pip install 'flashmem[lm-eval]'`). Importing this package needs
none of them; TASKS_DIR is the folder of offline task YAMLs shipped for the harness's --include_path."""
from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
LM_EVAL_MISSING = "lm-eval is not installed: pip install 'flashmem[lm-eval]'"
