"""Evaluating memory methods on a question set: `EvalConfig`, `evaluate(cfg)`, and `evaluate_together(cfgs)`
for several runs in one pass that share each batch's prompt prefill.

Per question: greedy batched generation (left padding, chat template), correctness of the final
answer, the teacher-forced NLL of the reference answer (memory placed where the trigger fires),
consolidations, trigger rate, tokens and time. Records are appended to OUT.records.jsonl as each
batch finishes, so a killed run resumes; the summary goes to OUT (JSON) and OUT.md (markdown).
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import MISSING, asdict, dataclass, replace
from pathlib import Path

import torch

from ..api import FlashMem
from ..config import GenerationConfig, MemoryConfig, ModelOptions, check, option
from ..data.datasets import Example, load_examples
from ..data.prompts import PROMPTS, system_prompt
from ..decoding.delimiters import delimiter_token_mask
from ..decoding.engine import shared_prefills
from ..decoding.generation import generate
from ..errors import FlashmemError
from ..files import atomic_write_text
from ..memory.base import LatentMemory
from ..memory.registry import METHOD_NAMES, WEIGHTS_NAME, build_memory, default_config, load_memory
from ..models.backbone import Backbone
from ..models.loader import load_backbone
from ..training.scoring import find_insertions
from ..training.thresholds import needs_threshold, prompt_threshold
from .ablations import ABLATIONS, foreign_context, foreign_examples, mean_latents
from .grading import GRADERS, grade
from .records import RecordFile
from .report import POSITION_BUCKET, compare_runs, comparison_markdown, machine_info, summarize, summary_markdown

EVAL_METHODS = ("vanilla", *METHOD_NAMES)
# An uncalibrated memory's threshold comes from the entropies of the set's first prompts; fixed
# prompts (not the current batch) keep it the same when a run resumes or grows its --limit.
THRESHOLD_PROMPTS = 8
# How the prompt is described in a record file's identity ("plain" keeps the label older runs used).
PROMPT_LABELS = {"plain": "chat template, greedy", "boxed": "chat template + boxed system prompt, greedy",
                 "memgen": "chat template, MemGen's instruction and question frame, greedy"}


@dataclass(frozen=True, kw_only=True)
class EvalConfig(ModelOptions):
    """Everything `flashmem eval` needs; stored in the result file."""

    method: str = option(MISSING, "memory method (vanilla: the plain model)", choices=EVAL_METHODS)
    memory: str | None = option(None, "trained memory folder (from `flashmem train`)")
    untrained: bool = option(False, "without --memory, evaluate an untrained memory (a plumbing check)")
    prompt_memory_only: bool = option(False, "ablation: keep the prompt-end memory, make none during decoding")
    data: str = option(MISSING, "gsm8k, math500, mawps, recall[:...], a .jsonl file or a hub id")
    split: str = option("test", "data split")
    data_dir: str | None = option(None, "folder holding NAME/SPLIT.jsonl (default $FLASHMEM_DATA_DIR, then the hub)")
    limit: int | None = option(None, "first N questions only")
    batch_size: int = option(8, "questions generated together")
    max_new_tokens: int = option(256, "most tokens per answer")
    nll_only: bool = option(False, "only the reference answers' NLL, no generation (fast; no accuracy)")
    nll: bool = option(True, "score the reference answer's NLL beside each generated answer")
    prompt: str = option("plain", "how the questions are asked (plain: as they are; boxed: a system prompt asking "
                         "for \\boxed{} final answers, Qwen's math-evaluation prompt; memgen: MemGen's instruction "
                         "and question frame)", choices=tuple(PROMPTS))
    prompt_window: int | None = option(None, "once the prompt-end memory is made, cut the prompt from the cache "
                                       "but its attention sinks and re-read its last N tokens, for every method, "
                                       "vanilla included (default: the memory's own setting, off for vanilla): "
                                       "can the memory carry what the prompt held?", metavar="N")
    ablate: str = option("none", "foreign-context: memory made from another question's prompt state; mean-latents: "
                         "the mean of this memory's latents over the questions (see ablations.py)", choices=ABLATIONS)
    out: str = option(MISSING, "summary JSON; records and markdown go beside it", metavar="FILE.json")
    grader: str = option("flashmem", "how answers are graded: flashmem's extraction, or Hugging Face's math-verify "
                         "(pip install 'flashmem[math-verify]')", choices=GRADERS)
    compare: list[str] = option(default_factory=list, help="paired comparison with other runs on the shared questions",
                                metavar="OTHER.json")

    def __post_init__(self) -> None:
        super().__post_init__()
        check([
            (self.limit is None or self.limit >= 1, f"--limit must be >= 1, got {self.limit}"),
            (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (self.prompt_window is None or self.prompt_window >= 0, f"--prompt-window must be >= 0, got {self.prompt_window}"),
            (self.max_new_tokens >= 1, f"--max-new-tokens must be >= 1, got {self.max_new_tokens}"),
            (self.method != "vanilla" or not (self.memory or self.untrained),
             "--method vanilla takes no --memory or --untrained (it is the plain model)"),
            (self.method == "vanilla" or bool(self.memory) or self.untrained,
             f"--method {self.method} needs --memory DIR (a trained memory), or --untrained to evaluate an "
             "untrained one as a plumbing check"),
            (not (self.memory and self.untrained), "--memory and --untrained exclude each other"),
            (self.nll or not self.nll_only, "--no-nll and --nll-only exclude each other"),
            (self.ablate == "none" or self.method not in ("vanilla", "softprompt"),
             f"--ablate {self.ablate} needs a memory that reads its context (not {self.method})"),
        ], "evaluation config")
        missing = [path for path in self.compare if not Path(path).is_file()]
        if missing:
            raise FlashmemError(f"--compare: run not found: {', '.join(missing)}")


# What a run's prompts depend on: runs evaluated together (`--also`) must agree on all of it.
SHARED_FIELDS = ("model", "dtype", "device", "data", "split", "data_dir", "limit", "batch_size", "prompt")


@dataclass
class _Run:
    """One evaluation in progress: its config, its memory (inside fm), records and generation settings."""

    cfg: EvalConfig
    fm: FlashMem
    out: Path
    settings: dict
    records: RecordFile
    gen: GenerationConfig
    foreign: dict[int, Example] | None
    label: str


def evaluate(cfg: EvalConfig) -> dict:
    """Run (or resume) the evaluation; write the records, the summary JSON and its markdown; return the summary."""
    return evaluate_together([cfg])[0]


def evaluate_together(cfgs: list[EvalConfig]) -> list[dict]:
    """Several runs on the same questions in one pass (`flashmem eval --also`), a batch at a time: each
    batch's prompts are encoded once and every run decodes from its own copy of that cache. On long
    prompts the prefill is most of the cost, so k runs cost little more than one. Records, summaries and
    resumption are each run's own, exactly as when the runs go one after another."""
    check_together(cfgs)
    first = cfgs[0]
    examples, report = load_examples(first.data, first.split, first.data_dir)
    if report.skipped:
        print(f"note: {report.summary()}", file=sys.stderr)
    bb = load_backbone(first.model, dtype=first.dtype, device=first.device)
    runs = [_start(cfg, bb, examples, report.path, [c.out for c in cfgs if c is not cfg]) for cfg in cfgs]
    examples = examples[: first.limit] if first.limit else examples
    if len(runs) == 1:
        run_questions(runs, examples, first.batch_size)
    else:  # room for the live batch, a foreign-context batch and each question's teacher-forced prefill
        with shared_prefills(capacity=first.batch_size + 2):
            run_questions(runs, examples, first.batch_size)
    return [_finish(run, examples) for run in runs]


def check_together(cfgs: list[EvalConfig]) -> None:
    """Runs evaluated together share their questions and prompts, and write to different files."""
    if not cfgs:
        raise FlashmemError("nothing to evaluate")
    for cfg in cfgs[1:]:
        for name in SHARED_FIELDS:
            if getattr(cfg, name) != getattr(cfgs[0], name):
                raise FlashmemError(f"runs evaluated together share the questions and their prompts: --{name.replace('_', '-')} "
                                    f"differs ({getattr(cfgs[0], name)!r} for {cfgs[0].out}, {getattr(cfg, name)!r} for {cfg.out})")
    outs = [str(Path(cfg.out).resolve()) for cfg in cfgs]
    repeated = sorted({out for out in outs if outs.count(out) > 1})
    if repeated:
        raise FlashmemError(f"two runs would write the same result file: {repeated[0]} (give each its own --out)")


def _start(cfg: EvalConfig, bb: Backbone, examples: list[Example], source: str | None,
           shared_with: list[str]) -> _Run:
    """Build one run's memory and open (or resume) its records; `examples` is the whole set, before --limit."""
    memory, policy, notes = method_memory(cfg, bb)
    fm = FlashMem(bb, memory, trained=cfg.memory is not None, config=policy, system=system_prompt(cfg.prompt))
    notes += ensure_threshold(fm, examples)
    if shared_with:
        notes.append(f"evaluated in one pass with {', '.join(shared_with)}: each batch's prompt prefill ran once, "
                     "in the first run of the pass, so the other runs' times leave it out")
    for note in notes:
        print(f"note: {cfg.out}: {note}" if shared_with else f"note: {note}", file=sys.stderr)
    foreign = foreign_examples(examples) if cfg.ablate == "foreign-context" else None
    examples = examples[: cfg.limit] if cfg.limit else examples
    identity = record_identity(cfg, fm)
    settings = {**identity, "memory": cfg.memory or ("untrained" if memory is not None else None),
                "limit": cfg.limit, "batch_size": cfg.batch_size, "data_dir": cfg.data_dir,
                "data_source": source, "notes": notes, "machine": machine_info(), "config": asdict(cfg)}
    out = Path(cfg.out)
    records = open_records(out, identity, settings, examples)
    if cfg.ablate == "mean-latents":
        fm.memory = mean_latents(fm.backbone, fm.memory, fm.config, [reference_pair(fm, ex) for ex in examples],
                                 out.with_suffix(".mean_latents.safetensors"))
    # The foreign batch follows the live one row for row, so rows may not leave it as they finish.
    gen = GenerationConfig(max_new_tokens=cfg.max_new_tokens, compact=foreign is None, prompt_window=cfg.prompt_window)
    label = out.stem if shared_with else cfg.method
    return _Run(cfg, fm, out, settings, records, gen, foreign, label)


def _finish(run: _Run, examples: list[Example]) -> dict:
    """Summarize a finished run: the summary JSON and markdown (with the --compare table when asked)."""
    summary = summarize([run.records.done[ex.line] for ex in examples], run.settings)
    summary["records_file"] = run.records.path.name
    text = summary_markdown(summary)
    if run.cfg.compare:  # compare_runs reads this run from its files like any other run
        write_summary(run.out, summary, text)
        summary["comparison"] = compare_runs([*run.cfg.compare, run.out])
        text += "\n\n" + comparison_markdown(summary["comparison"])
    write_summary(run.out, summary, text)
    summary["markdown"] = text
    return summary


def records_path(out: Path) -> Path:
    return out.with_suffix(".records.jsonl")


def open_records(out: Path, identity: dict, settings: dict, examples: list[Example]) -> RecordFile:
    """The run's record file, refusing one whose question ids now hold other questions."""
    records = RecordFile(records_path(out), identity, settings)
    changed = [ex.line for ex in examples
               if ex.line in records.done and records.done[ex.line].get("question_sha") != question_sha(ex.question)]
    if changed:
        raise FlashmemError(f"{records.path} holds other questions under the same ids (e.g. {changed[:3]}): "
                            "the data changed since that run; use another --out")
    if records.done:
        print(f"resuming: {sum(ex.line in records.done for ex in examples)} of {len(examples)} questions "
              f"already in {records.path}", file=sys.stderr)
    return records


def write_summary(out: Path, summary: dict, text: str) -> None:
    atomic_write_text(out, json.dumps(summary, indent=2, default=_json_default) + "\n")
    atomic_write_text(out.with_suffix(".md"), text + "\n")


# ---- setting up a method ----------------------------------------------------------------------
def method_memory(cfg: EvalConfig, bb: Backbone) -> tuple[LatentMemory | None, MemoryConfig | None, list[str]]:
    """The memory cfg asks for (None for vanilla), the policy it runs with, and notes on what was built."""
    if cfg.method == "vanilla":
        return None, None, []
    if cfg.memory:
        memory = load_memory(cfg.memory, bb)
        if memory.config.method != cfg.method:
            raise FlashmemError(f"memory {cfg.memory} is a {memory.config.method} memory, not {cfg.method}")
        policy, notes = memory.config, []
        if cfg.prompt_memory_only:  # the ablation: what memory made during decoding adds
            policy = replace(policy, trigger_memory=False)
            notes.append("prompt-end memory only (--prompt-memory-only): no memory during decoding")
        if cfg.prompt_window is not None and cfg.prompt_window != policy.prompt_window:
            policy = replace(policy, prompt_window=cfg.prompt_window)
            notes.append(f"prompt window {cfg.prompt_window} (the memory was trained with {memory.config.prompt_window})")
        return memory, policy, notes
    torch.manual_seed(0)  # an untrained memory is the same one on every run (resume depends on it)
    memory = build_memory(bb, default_config(cfg.method))  # the method's own policy (MemGen: delimiters)
    return memory, memory.config, [f"UNTRAINED {cfg.method} memory (plumbing check, not a trained result)"]


def ensure_threshold(fm: FlashMem, examples: list[Example]) -> list[str]:
    """Give an uncalibrated monitor-triggered memory a threshold from the set's first prompts."""
    if not needs_threshold(fm.config):
        return []
    ids, mask = fm.encode([ex.question for ex in examples[:THRESHOLD_PROMPTS]])
    fm.config = replace(fm.config, threshold=prompt_threshold(fm.backbone, ids, mask, fm.config))
    return [f"memory has no calibrated threshold; using the {fm.config.percentile:g}th percentile of the monitor's "
            f"entropy over the first {len(ids)} prompts: {fm.config.threshold:.4f} (run `flashmem calibrate`)"]


def record_identity(cfg: EvalConfig, fm: FlashMem) -> dict:
    """The settings that define what a record means; a resumed run must match them exactly."""
    bb = fm.backbone
    identity = {"model": cfg.model, "model_fingerprint": bb.identity()["fingerprint"],
                "dtype": str(bb.dtype).removeprefix("torch."), "method": cfg.method, "data": cfg.data,
                "split": cfg.split, "max_new_tokens": cfg.max_new_tokens, "prompt": PROMPT_LABELS[cfg.prompt]}
    if not cfg.nll:
        identity["nll"] = False
    if cfg.ablate != "none":
        identity["ablate"] = cfg.ablate
    if cfg.nll_only:  # only then, so records written before the option existed still resume
        identity["nll_only"] = True
    if cfg.grader != "flashmem":  # likewise
        identity["grader"] = cfg.grader
    if cfg.prompt_window and fm.config is None:
        identity["prompt_window"] = cfg.prompt_window
    if fm.config is not None:
        # prompt_window and query_agnostic only when set, so records written before they existed still resume
        identity["memory_config"] = {k: v for k, v in asdict(fm.config).items()
                                     if k != "version" and (k not in ("prompt_window", "query_agnostic") or v)}
        identity["memory_weights"] = _file_digest(Path(cfg.memory) / WEIGHTS_NAME) if cfg.memory else "untrained, seed 0"
    return identity


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


# ---- the evaluation loop -----------------------------------------------------------------------
def run_questions(runs: list[_Run], examples: list[Example], batch_size: int, progress: bool = True) -> None:
    """Generate and score every example a run has not recorded yet, a batch at a time: each batch goes
    through every run in turn (so they can share its prefill) and is appended to each run's records."""
    from tqdm import tqdm

    todo = [ex for ex in examples if any(ex.line not in run.records.done for run in runs)]
    bar = tqdm(total=len(examples), initial=len(examples) - len(todo), desc="eval " + "+".join(r.label for r in runs),
               unit="q", file=sys.stderr, disable=not progress)
    tally = {run.label: _tally(run, examples) for run in runs}  # label: [correct, answered]
    try:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start: start + batch_size]
            for run in runs:
                batch = [ex for ex in chunk if ex.line not in run.records.done]
                if batch:
                    rows = _score(run, batch)
                    run.records.append(rows)
                    if not run.cfg.nll_only:
                        tally[run.label][0] += sum(r["correct"] for r in rows)
                        tally[run.label][1] += len(rows)
            bar.update(len(chunk))
            bar.set_postfix({("acc" if len(runs) == 1 else label): f"{c / n:.3f}" for label, (c, n) in tally.items() if n})
    finally:
        bar.close()


def _tally(run: _Run, examples: list[Example]) -> list[int]:
    done = [run.records.done[ex.line] for ex in examples if ex.line in run.records.done]
    scored = [r for r in done if r["correct"] is not None]
    return [sum(bool(r["correct"]) for r in scored), len(scored)]


def _score(run: _Run, batch: list[Example]) -> list[dict]:
    """One run's records for a batch: generation and scoring, or (--nll-only) the reference NLL alone."""
    one = lambda ex: with_foreign(run.fm, run.foreign, [ex])  # noqa: E731  (the FlashMem a question's NLL runs with)
    if run.cfg.nll_only:
        return [nll_record(one(ex), ex, run.gen.prompt_window or 0) for ex in batch]
    return score_batch(with_foreign(run.fm, run.foreign, batch), batch, run.gen, run.cfg.nll, single=one,
                       grader=run.cfg.grader)


def with_foreign(fm: FlashMem, foreign: dict[int, Example] | None, batch: list[Example]) -> FlashMem:
    """fm itself, or (--ablate foreign-context) fm whose memory reads the batch's foreign prompt states."""
    if foreign is None:
        return fm
    memory = foreign_context(fm.backbone, fm.memory, [foreign[ex.line].question for ex in batch], fm.system, fm.config)
    return FlashMem(fm.backbone, memory, fm.trained, fm.config, fm.system)


def score_batch(fm: FlashMem, batch: list[Example], gen: GenerationConfig, nll: bool = True,
                single=None, grader: str = "flashmem") -> list[dict]:
    """Records for a batch: generation (timed together) then one teacher-forced NLL per question (unless not
    nll); single(ex) gives the FlashMem a question's NLL runs with (default fm); answers graded by grader."""
    bb = fm.backbone
    ids, mask = fm.encode([ex.question for ex in batch])
    start = time.perf_counter()
    result = generate(bb, ids, mask, fm.memory, gen, monitor=False, policy=fm.config)
    gen_seconds = (time.perf_counter() - start) / len(batch)
    signal = trigger_signal(bb, fm.config if fm.memory is not None else None)
    rows = []
    for r, ex in enumerate(batch):
        tokens = result.tokens[r]
        text = bb.tokenizer.decode(tokens, skip_special_tokens=True)
        start = time.perf_counter()
        scored = answer_nll(single(ex) if single else fm, ex, gen.prompt_window or 0) if nll else (None, 0, [])
        steps = max(len(tokens) - 1, 0)  # decode steps after which the trigger was consulted
        up = signal(result, r, steps) if signal else None
        rows.append({
            "id": ex.line, "question_sha": question_sha(ex.question), "final": ex.final,
            "prediction": text, "correct": bool(grade(text, ex.final, ex.kind, grader)),
            "nll": scored[0], "nll_tokens": scored[1], "nll_insertions": scored[2],
            "gen_tokens": len(tokens), "consolidations": len(result.traces[r].consolidations),
            "prompt_memory": result.traces[r].prompt_memory, "decode_steps": steps,
            "trigger_steps": sum(up) if up is not None else None,
            "signal_by_position": by_position(up) if up is not None else None,
            "consolidation_steps": result.traces[r].consolidations,
            "gen_seconds": gen_seconds, "nll_seconds": time.perf_counter() - start,
        })
    return rows


def nll_record(fm: FlashMem, ex: Example, window: int = 0) -> dict:
    """A record with the reference answer's NLL only (--nll-only): no generation, accuracy None."""
    start = time.perf_counter()
    nll = answer_nll(fm, ex, window)
    return {
        "id": ex.line, "question_sha": question_sha(ex.question), "final": ex.final, "prediction": None,
        "correct": None, "nll": nll[0], "nll_tokens": nll[1], "nll_insertions": nll[2], "gen_tokens": 0,
        "consolidations": None, "prompt_memory": None, "decode_steps": 0, "trigger_steps": None,
        "gen_seconds": 0.0, "nll_seconds": time.perf_counter() - start,
    }


def question_sha(question: str) -> str:
    return hashlib.sha1(question.encode()).hexdigest()[:12]


def reference_pair(fm: FlashMem, ex: Example) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt ids (T,), reference answer ids + EOS (N,)) of a question, as the NLL scores them."""
    tok = fm.backbone.tokenizer
    prompt, _ = fm.encode([ex.question])
    answer = tok(ex.answer, add_special_tokens=False)["input_ids"]
    answer += [tok.eos_token_id] if tok.eos_token_id is not None else []  # the model should also stop
    return prompt[0], torch.tensor(answer, device=fm.backbone.device)


def answer_nll(fm: FlashMem, ex: Example, window: int = 0) -> tuple[float | None, int, list[int]]:
    """(summed NLL, tokens, insertions) of the reference answer + EOS; NLL None when it cannot fit.
    window: the plain model's prompt window (a memory runs its policy's)."""
    bb, cfg = fm.backbone, fm.config if fm.memory is not None else None
    prompt, answer = reference_pair(fm, ex)
    prompt = prompt[None]
    extra = 0 if cfg is None else cfg.num_latents * (1 + cfg.budget)
    if prompt.shape[1] + answer.numel() + extra > bb.max_positions:
        return None, int(answer.numel()), []
    scored = find_insertions(bb, fm.memory, prompt[0], answer, policy=cfg, window=window)
    return float(scored.nll), scored.n_tokens, list(scored.insertions)


def trigger_signal(bb: Backbone, policy: MemoryConfig | None):
    """f(result, row, steps) -> per answer step, whether the method's trigger signal was up; None when the
    method makes no memory during decoding."""
    if policy is None or not policy.trigger_memory or policy.trigger == "always":
        return None
    if policy.trigger == "monitor":
        return lambda result, r, steps: [e > policy.threshold for e in result.traces[r].entropy[:steps]]
    delimiters = delimiter_token_mask(bb.tokenizer, bb.vocab_size).tolist()
    return lambda result, r, steps: [bool(delimiters[t]) for t in result.tokens[r][:steps]]


def by_position(up: list[bool]) -> list[list[int]]:
    """[[steps, raised], ...] per bucket of POSITION_BUCKET answer steps."""
    return [[len(chunk), sum(chunk)] for chunk in (up[i:i + POSITION_BUCKET] for i in range(0, len(up), POSITION_BUCKET))]


def _json_default(value):
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
