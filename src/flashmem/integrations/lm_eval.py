"""FlashMem inside EleutherAI's lm-evaluation-harness: the model `flashmem` (needs the lm-eval extra).

Importing this module registers the name with the harness; `flashmem lm-eval` does that and hands the
rest of its command line to the harness's own entry point, and Python users call
`lm_eval.simple_evaluate(model="flashmem", ...)` after `import flashmem.integrations.lm_eval`.

Requests are tokenised the way the harness's `hf` model does (its special-token rule, its
context/continuation split, its prefix token for an empty context, left truncation), so with memory
off both models score and generate the same (tests/test_lm_eval.py checks it against HFLM):
- generate_until: batches of flashmem.decoding.generation.generate with the memory's trigger policy, greedy
  unless the request samples; a row stops at EOS, at max_gen_toks or once its text holds one of
  `until`, and the text is cut at the first stop string.
- loglikelihood: flashmem.training.scoring.find_insertions, one request at a time: the teacher-forced path
  flashmem's own eval and training use (memory at the context's end, then where the trigger fires
  along the continuation).
- loglikelihood_rolling: the harness's rolling windows, each scored as above.
"""
from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from . import LM_EVAL_MISSING, render_tasks, task_names

try:
    import lm_eval.models  # noqa: F401  the harness's own models first: its registry fills itself only while empty
    from lm_eval import utils as harness_utils
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import register_model
    from lm_eval.models.utils import Collator, handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
except ImportError as err:  # pragma: no cover - exercised where the extra is missing
    raise ImportError(LM_EVAL_MISSING) from err
from tqdm import tqdm

from ..api import FlashMem
from ..config import GenerationConfig
from ..data.datasets import ENV_DATA_DIR
from ..decoding.generation import generate
from ..decoding.stopping import StopStrings
from ..errors import FlashmemError
from ..memory.registry import build_memory, default_config
from ..models.loader import load_backbone
from ..training.scoring import find_insertions

# The insertion-policy fields a run may override from --model_args (threshold=3.1,budget=0,...).
POLICY_FIELDS = ("threshold", "percentile", "budget", "min_gap", "prompt_memory", "trigger_memory", "trigger",
                 "entropy")
OFF = (None, "", "none", "off")


def load_flashmem(pretrained: str, memory: str | None, dtype: str, device: str, seed: int = 0) -> FlashMem:
    """The backbone named by `pretrained` with: no memory (memory none), a trained memory folder, or
    `untrained` (a seeded, untrained consolidator: a plumbing check)."""
    if memory not in OFF and memory != "untrained":
        return FlashMem.load(pretrained, memory=memory, dtype=dtype, device=device)
    backbone = load_backbone(pretrained, dtype=dtype, device=device)
    if memory in OFF:
        return FlashMem(backbone, None, trained=False)
    torch.manual_seed(seed)
    return FlashMem(backbone, build_memory(backbone, default_config("flashmem")), trained=False)


def with_policy(fm: FlashMem, overrides: dict[str, Any]) -> FlashMem:
    """fm with its insertion policy changed by --model_args overrides (validated by MemoryConfig)."""
    unknown = sorted(set(overrides) - set(POLICY_FIELDS))
    if unknown:
        raise FlashmemError(f"unknown flashmem model_args {unknown}; policy overrides: {', '.join(POLICY_FIELDS)}")
    if overrides and fm.memory is None:
        raise FlashmemError(f"{sorted(overrides)} need a memory (memory=DIR or memory=untrained)")
    if overrides:  # the harness parses "3" as an int and "true" as a bool; the config wants floats here
        fm.config = replace(fm.config, **{k: float(v) if k in ("threshold", "percentile") else v
                                          for k, v in overrides.items()})
    return fm


@register_model("flashmem")
class FlashMemLM(TemplateLM):
    """A frozen backbone with an optional FlashMem memory, as the harness's LM.

    pretrained: any flashmem model spec (alias, hub id, folder, .gguf, random:NAME) or a FlashMem.
    memory: a memory folder, `untrained`, or none (the plain model). Policy overrides (threshold,
    budget, min_gap, ...) replace the memory's own. batch_size: questions decoded together.
    """

    def __init__(self, pretrained: str | FlashMem = "smollm2-135m", memory: str | None = None, dtype: str = "auto",
                 device: str | None = "auto", batch_size: int | str = 1, max_new_tokens: int = 256,
                 max_length: int | None = None, add_bos_token: bool | None = None, seed: int = 0,
                 max_batch_size: int | None = None, **policy: Any):
        super().__init__()
        fm = pretrained if isinstance(pretrained, FlashMem) else \
            load_flashmem(str(pretrained), None if memory is None else str(memory), dtype, _device(device), seed)
        self.fm = with_policy(fm, policy)
        self.tokenizer = self.fm.backbone.tokenizer  # TemplateLM.chat_template reads it
        self._batch_size = _batch_size(batch_size, max_batch_size)
        self._max_new_tokens = int(max_new_tokens)
        self._max_length = int(max_length) if max_length else None
        self.add_bos_token = add_bos_token
        self.seed = int(seed)

    # ---- what the harness reads ------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        """What an empty context is conditioned on: BOS, else EOS (as the harness's hf model)."""
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.tokenizer.eos_token_id

    @property
    def max_length(self) -> int:
        return self._max_length or self.fm.backbone.max_positions

    @property
    def max_gen_toks(self) -> int:
        return self._max_new_tokens

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def device(self) -> torch.device:
        return self.fm.backbone.device

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "name_or_path", "") or self.fm.backbone.name).replace("/", "__")

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """The harness's --apply_chat_template: the tokenizer's own template, as text."""
        return self.tokenizer.apply_chat_template(chat_history, tokenize=False, add_generation_prompt=add_generation_prompt,
                                                  continue_final_message=not add_generation_prompt)

    def get_model_info(self) -> dict:
        """Written into the harness's results file beside its own fields."""
        fm = self.fm
        return {"flashmem_model": fm.backbone.name, "flashmem_memory": None if fm.memory is None else
                {"trained": fm.trained, **{k: getattr(fm.config, k) for k in ("method", *POLICY_FIELDS)}},
                "model_dtype": str(fm.backbone.dtype)}

    # ---- tokens ----------------------------------------------------------------------------
    def _special_tokens(self, text: str, add_special_tokens: bool | None) -> dict:
        """The hf model's rule: an explicit flag, else add_bos_token, else the tokenizer's default; never
        a second BOS before text that already starts with one."""
        if add_special_tokens is not None:
            return {"add_special_tokens": add_special_tokens}
        if self.tokenizer.bos_token and text.startswith(self.tokenizer.bos_token):
            return {"add_special_tokens": False}
        return {} if self.add_bos_token is None else {"add_special_tokens": self.add_bos_token}

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, left_truncate_len: int | None = None,
                   **kwargs) -> list[int]:
        ids = self.tokenizer.encode(string, **self._special_tokens(string, add_special_tokens))
        return ids[-left_truncate_len:] if left_truncate_len else ids

    def tok_batch_encode(self, strings: list[str], left_truncate_len: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded ids and mask (B, T) on the model's device."""
        side, self.tokenizer.padding_side = self.tokenizer.padding_side, "left"
        try:
            enc = self.tokenizer(strings, padding="longest", return_tensors="pt",
                                 **self._special_tokens(strings[0], None))
        finally:
            self.tokenizer.padding_side = side
        ids, mask = enc["input_ids"], enc["attention_mask"]
        if left_truncate_len:
            ids, mask = ids[:, -left_truncate_len:], mask[:, -left_truncate_len:]
        return ids.to(self.device), mask.to(self.device)

    # ---- log-likelihoods -------------------------------------------------------------------
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """(log p(continuation | context), whether greedy decoding gives it) per (key, context, continuation)."""
        results = []
        for key, context, continuation in tqdm(requests, disable=disable_tqdm, desc="flashmem loglikelihood"):
            answer = self._score(context, continuation)
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, answer)
            results.append(answer)
        return results

    def _score(self, context: list[int], continuation: list[int]) -> tuple[float, bool]:
        """One request through the teacher-forced path (memory placed as flashmem's eval places it); the
        context is cut from the left to fit, as the harness's hf model does."""
        keep = (context + continuation)[-(self.max_length + 1):]
        context = keep[: len(keep) - len(continuation)]
        if not context:
            raise FlashmemError(f"a continuation of {len(continuation)} tokens leaves no room for its context "
                                f"within max_length {self.max_length}")
        fm = self._ready(torch.tensor([context], device=self.device))
        as_tensor = lambda ids: torch.tensor(ids, dtype=torch.long, device=self.device)  # noqa: E731
        with torch.no_grad():
            scored = find_insertions(fm.backbone, fm.memory, as_tensor(context), as_tensor(continuation),
                                     policy=fm.config)
        return -float(scored.nll), int(scored.misses) == 0

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Whole-text log-likelihood over the harness's disjoint rolling windows, each scored like a request."""
        results = []
        for (text,) in tqdm([r.args for r in requests], disable=disable_tqdm, desc="flashmem loglikelihood_rolling"):
            windows = map(harness_utils.make_disjoint_window, harness_utils.get_rolling_token_windows(
                token_list=self.tok_encode(text), prefix_token=self.prefix_token_id, max_seq_len=self.max_length,
                context_len=1))
            total = sum(self._score(context, continuation)[0] for context, continuation in windows)
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
            results.append(total)
        return results

    # ---- generation ------------------------------------------------------------------------
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Batches of requests with the same generation settings, longest first (as the hf model)."""
        order = Collator([r.args for r in requests], sort_fn=lambda r: (-len(self.tok_encode(r[0])), r[0]),
                         group_by="gen_kwargs", group_fn=lambda r: r[1])
        bar = tqdm(total=len(requests), disable=disable_tqdm, desc="flashmem generate_until")
        results = []
        for chunk in order.get_batched(n=self.batch_size):
            contexts, settings = zip(*chunk)
            texts = self._generate_batch(list(contexts), settings[0])
            for context, text in zip(contexts, texts):
                self.cache_hook.add_partial("generate_until", (context, settings[0]), text)
            results.extend(texts)
            bar.update(len(texts))
        bar.close()
        return order.get_original(results)

    def _generate_batch(self, contexts: list[str], settings: dict) -> list[str]:
        kwargs = normalize_gen_kwargs(settings, self.max_gen_toks)
        until = handle_stop_sequences(kwargs.pop("until", None),
                                      eos=self.tokenizer.decode(self.eot_token_id, skip_special_tokens=False))
        gen = self._generation_config(kwargs)
        if gen.max_new_tokens >= self.max_length:
            raise FlashmemError(f"max_gen_toks {gen.max_new_tokens} must be below the context of {self.max_length}")
        ids, mask = self.tok_batch_encode(contexts, left_truncate_len=self.max_length - gen.max_new_tokens)
        fm = self._ready(ids, mask)
        result = generate(fm.backbone, ids, mask, fm.memory, gen, monitor=False, policy=fm.config,
                          stop=StopStrings(self.tokenizer, until, len(contexts)))
        return [postprocess_generated_text(self.tokenizer.decode(tokens, skip_special_tokens=True), until, None)
                for tokens in result.tokens]

    def _generation_config(self, kwargs: dict) -> GenerationConfig:
        """Greedy unless the request samples (do_sample with a temperature above 0)."""
        sample = bool(kwargs.get("do_sample")) and float(kwargs.get("temperature") or 0.0) > 0.0
        return GenerationConfig(max_new_tokens=int(kwargs["max_gen_toks"]),
                                temperature=float(kwargs["temperature"]) if sample else 0.0,
                                top_p=float(kwargs.get("top_p") or 1.0) if sample else 1.0, seed=self.seed)

    def _ready(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> FlashMem:
        """The model, its memory's threshold set first when it has none (an untrained memory: from these
        prompts' entropies, once, like flashmem's own commands)."""
        if self.fm.memory is not None:
            self.fm.ensure_threshold(ids, torch.ones_like(ids) if mask is None else mask)
        return self.fm


def _device(device: str | None) -> str:
    """flashmem's device for the harness's: its own default is cuda:0 even on a machine without CUDA,
    where its hf model falls back to the CPU; so does this one, saying so."""
    if device and str(device).startswith("cuda") and not torch.cuda.is_available():
        print(f"flashmem: no CUDA device for device={device} (the harness's default): running on the CPU",
              file=sys.stderr)
        return "cpu"
    return str(device) if device else "auto"


def _batch_size(batch_size: int | str, max_batch_size: int | None) -> int:
    """The harness's batch_size: a number, or auto[:N] (taken as max_batch_size, default 8: flashmem
    does not probe memory for the largest batch)."""
    if isinstance(batch_size, str) and batch_size.startswith("auto"):
        return int(max_batch_size or 8)
    size = int(batch_size)
    if size < 1:
        raise FlashmemError(f"batch_size must be >= 1, got {batch_size}")
    return size


def cli_evaluate(argv: list[str], data_dir: str | None = None) -> int:
    """The harness's own command line on argv, with `flashmem` registered. --model defaults to flashmem and
    --include_path to flashmem's offline task YAMLs, written into a temporary folder with their data files
    under data_dir (else $FLASHMEM_DATA_DIR); every other option is the harness's."""
    from lm_eval.__main__ import cli_evaluate as harness_main

    names = {a.split("=", 1)[0] for a in argv}
    subcommand = argv[:1] if argv[:1] and argv[0] in ("run", "ls", "validate") else []
    rest = argv[len(subcommand):]
    if not subcommand or subcommand == ["run"]:
        rest = ([] if "--model" in names else ["--model", "flashmem"]) + rest
    with tempfile.TemporaryDirectory(prefix="flashmem-tasks-") as scratch:
        if "--include_path" not in names and (subcommand or rest):
            folder = _data_folder(data_dir, _requested_tasks(rest))
            if folder is not None:
                rest += ["--include_path", str(render_tasks(folder, Path(scratch)))]
        saved, sys.argv = sys.argv, ["lm-eval", *(subcommand or ["run"]), *rest]
        try:
            harness_main()
        except SystemExit as stop:
            return stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        finally:
            sys.argv = saved
    return 0


def _requested_tasks(argv: list[str]) -> set[str]:
    """Task names given to --tasks (comma-separated, as the harness takes them)."""
    for i, arg in enumerate(argv):
        if arg.startswith("--tasks="):
            return set(arg.split("=", 1)[1].split(","))
        if arg == "--tasks" and i + 1 < len(argv):
            return set(argv[i + 1].split(","))
    return set()


def _data_folder(data_dir: str | None, tasks: set[str]) -> Path | None:
    """The folder flashmem's task files read: data_dir, else $FLASHMEM_DATA_DIR. None when neither is
    set and no flashmem task was asked for; an error naming both when one was."""
    chosen = data_dir or os.environ.get(ENV_DATA_DIR)
    if chosen:
        return Path(chosen).expanduser()
    ours = sorted(tasks & ({*task_names(), "flashmem_local"}))
    if ours:
        raise FlashmemError(f"{', '.join(ours)} read local JSONL files from a data folder (gsm8k/, mawps/): pass "
                            f"--data-dir FOLDER or set ${ENV_DATA_DIR}")
    return None
