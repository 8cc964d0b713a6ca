"""`flashmem lm-eval`: EleutherAI's lm-evaluation-harness with the `flashmem` model registered.

Everything after `lm-eval` goes to the harness's own command line (its options under their own names:
--model_args, --tasks, --limit, --include_path, --apply_chat_template, --output_path, ...); --model
defaults to flashmem, so `--model hf` runs the harness's plain model through the same command, and
--include_path defaults to flashmem's offline task YAMLs. Only --threads N is read here.
"""
from __future__ import annotations

from ..errors import FlashmemError
from ..integrations import LM_EVAL_MISSING
from ..runtime import set_threads

DESCRIPTION = ("Run EleutherAI's lm-evaluation-harness with the flashmem model registered: every harness option "
               "works under its own name (--model_args pretrained=smollm2-135m,memory=DIR --tasks gsm8k_local "
               "--limit 50 --output_path out/). --model defaults to flashmem, --include_path to flashmem's offline "
               "task YAMLs (gsm8k_local, gsm8k_cot_zeroshot_local, mawps_local). Needs pip install 'flashmem[lm-eval]'.")


def run_lm_eval(argv: list[str]) -> int:
    """Register the model, then hand argv (less --threads) to the harness; its exit status is ours."""
    threads, argv = pop_threads(argv)
    set_threads(threads)
    try:
        from ..integrations import lm_eval as integration
    except ImportError as err:
        if LM_EVAL_MISSING in str(err):
            raise FlashmemError(LM_EVAL_MISSING) from None
        raise
    return integration.cli_evaluate(argv or ["--help"])


def pop_threads(argv: list[str]) -> tuple[int | None, list[str]]:
    """(--threads N or None, the other arguments): the one option flashmem keeps for itself."""
    rest, threads, i = [], None, 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--threads" or arg.startswith("--threads="):
            value = arg.split("=", 1)[1] if "=" in arg else (argv[i + 1] if i + 1 < len(argv) else "")
            if not value.isdigit() or int(value) < 1:
                raise FlashmemError(f"--threads takes a positive number, got {value!r}")
            threads, i = int(value), i + (1 if "=" in arg else 2)
            continue
        rest.append(arg)
        i += 1
    return threads, rest
