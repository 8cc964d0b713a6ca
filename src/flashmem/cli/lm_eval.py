"""`flashmem lm-eval`: EleutherAI's lm-evaluation-harness with the `flashmem` model registered.

Everything after `lm-eval` goes to the harness's own command line (its options under their own names:
--model_args, --tasks, --limit, --include_path, --apply_chat_template, --output_path, ...); --model
defaults to flashmem, so `--model hf` runs the harness's plain model through the same command, and
--include_path defaults to flashmem's offline task YAMLs, their data read from --data-dir FOLDER (else
$FLASHMEM_DATA_DIR). Only --threads N and --data-dir FOLDER are read here.
"""
from __future__ import annotations

from ..errors import FlashmemError
from ..integrations import LM_EVAL_MISSING
from ..models.runtime import set_threads

DESCRIPTION = ("Run EleutherAI's lm-evaluation-harness with the flashmem model registered: every harness option "
               "works under its own name (--model_args pretrained=smollm2-135m,memory=DIR --tasks gsm8k_local "
               "--limit 50 --output_path out/). --model defaults to flashmem, --include_path to flashmem's offline "
               "task YAMLs (gsm8k_local, gsm8k_cot_zeroshot_local, mawps_local), which read gsm8k/ and mawps/ JSONL from "
               "--data-dir FOLDER (else $FLASHMEM_DATA_DIR). Needs pip install 'flashmem[lm-eval]'.")


def run_lm_eval(argv: list[str]) -> int:
    """Register the model, then hand argv (less --threads and --data-dir) to the harness; its exit status is ours."""
    threads, argv = pop_threads(argv)
    data_dir, argv = pop_option(argv, "--data-dir")
    set_threads(threads)
    try:
        from ..integrations import lm_eval as integration
    except ImportError as err:
        if LM_EVAL_MISSING in str(err):
            raise FlashmemError(LM_EVAL_MISSING) from None
        raise
    return integration.cli_evaluate(argv or ["--help"], data_dir)


def pop_threads(argv: list[str]) -> tuple[int | None, list[str]]:
    """(--threads N or None, the other arguments)."""
    value, rest = pop_option(argv, "--threads")
    if value is not None and (not value.isdigit() or int(value) < 1):
        raise FlashmemError(f"--threads takes a positive number, got {value!r}")
    return (int(value) if value is not None else None), rest


def pop_option(argv: list[str], name: str) -> tuple[str | None, list[str]]:
    """(the value of `name VALUE` or `name=VALUE`, or None; the other arguments): options flashmem keeps."""
    rest, value, i = [], None, 0
    while i < len(argv):
        arg = argv[i]
        if arg == name or arg.startswith(name + "="):
            value = arg.split("=", 1)[1] if "=" in arg else (argv[i + 1] if i + 1 < len(argv) else "")
            i += 1 if "=" in arg else 2
            continue
        rest.append(arg)
        i += 1
    return value, rest
