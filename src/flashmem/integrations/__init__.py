"""Bridges to tools outside flashmem, each behind its optional extra: `flashmem.integrations.lm_eval`
(EleutherAI's lm-evaluation-harness, `pip install 'flashmem[lm-eval]'`). Importing this package needs
none of them. TASKS_DIR holds offline task YAMLs for the harness; their data_files name the data folder
as $FLASHMEM_DATA_DIR, which `render_tasks` replaces with a real folder (no folder is guessed)."""
from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
DATA_PLACEHOLDER = "$FLASHMEM_DATA_DIR"
LM_EVAL_MISSING = "lm-eval is not installed: pip install 'flashmem[lm-eval]'"


def task_names() -> list[str]:
    """The shipped tasks, by file name (gsm8k_local, ...)."""
    return sorted(p.stem for p in TASKS_DIR.glob("*.yaml"))


def render_tasks(data_dir: Path, into: Path) -> Path:
    """Write the shipped task YAMLs into `into` with their data files under data_dir; returns `into`."""
    into.mkdir(parents=True, exist_ok=True)
    for path in TASKS_DIR.glob("*.yaml"):
        (into / path.name).write_text(path.read_text().replace(DATA_PLACEHOLDER, str(Path(data_dir).resolve())))
    return into
