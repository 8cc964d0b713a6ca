"""KV-cache compression baselines from NVIDIA's kvpress on flashmem's recall task, written as flashmem records.

Run with this folder's own environment (``bash results/kvpress/setup.sh`` makes it)::

    results/kvpress/.venv/bin/python results/kvpress/run_press.py --press snapkv --kept 8 \\
        --data recall:context=512,facts=16 --split test --limit 200 --out OUT/snapkv_k8.json

It writes ``OUT/snapkv_k8.records.jsonl`` (one record per item, resumable) and the summary
``OUT/snapkv_k8.json`` (+ ``.md``), in the formats of ``flashmem eval``, so that flashmem's own
``flashmem compare OUT/snapkv_k8.json plain_cut.json`` (run from flashmem's .venv) pairs it with
flashmem's runs on the same items.

**Why a separate environment, and how flashmem's code is reached.** kvpress 0.5.5 needs
transformers < 5.3; flashmem's .venv runs a newer one. flashmem is not installed here. Importing
``flashmem.data.recall`` normally runs ``flashmem/__init__.py``, which imports flashmem's model code
(torch and transformers-5 code). So :func:`light_flashmem` registers a bare package object named
``flashmem`` whose ``__path__`` is this repository's ``src/flashmem`` and then imports only
pure-Python modules through it: ``data.recall`` (the generator), ``data.answers`` (scoring),
``evaluation.records`` (the records file), ``evaluation.report`` (the summary; numpy only) and
``files``. Sub-package ``__init__`` files on that path hold docstrings only. The script checks that
neither torch nor transformers was imported by them. ``question_sha`` lives in
``evaluation/evaluate.py``, which imports the model stack, so it is restated here
(``sha1(question)[:12]``); ``flashmem compare`` refuses any item whose sha differs, so a successful
comparison with a flashmem run checks it.

**The prompt.** Exactly flashmem's: the tokenizer's chat template applied to the single user message
``ex.question`` (no system message; SmolLM2's template adds its default one), generation prompt
added, tokenised without special tokens. The *context* is that text up to the recall question
suffix ``"\\n\\nQuestion: ... Answer with the number only."`` (``recall.question_suffix`` of the
item's needle, regenerated and checked against ``ex.question``); the *question* is the rest.

**kvpress's pipeline, not a loop of our own.** ``pipeline("kv-press-text-generation")`` takes
``context`` and ``question`` texts and wraps them itself: chat template applied to
``context + separator``, split at the separator, so it sends ``[template prefix + context]`` to the
press and ``question + [end of user turn + assistant header]`` afterwards. Passing the document as
``context`` and the question suffix as ``question`` therefore gives exactly flashmem's text with no
re-templating of our own. Every item checks this on token ids: the pipeline's own ``preprocess``
output (context ids + question ids) must equal the ids of flashmem's prompt text tokenised whole
(they did on every item tried: the split falls between ``.`` and ``\\n\\n``, a pre-tokenizer
boundary). The pipeline then prefills the context under the press (``with press(model)``) and
decodes greedily from the compressed cache (question positions continue after the *uncompressed*
context length, as kvpress does). Its stop token is the generation config's EOS (id 2,
``<|im_end|>``), the same id flashmem stops at. The answer's token ids are read back by a forward
hook on the LM (argmax of the last logits, the pipeline's own rule), which gives ``gen_tokens`` and
is checked against the pipeline's decoded text.

**The control.** ``--press none`` runs the same pipeline with no press (the whole prompt in the
cache; no ``--kept``). On the first 3 test items of ``recall:context=512,facts=16`` it wrote the same
answers, token for token, as flashmem's own committed plain-model run
(``results/recall/eval/cut_c512/vanilla_whole.records.jsonl``), so the prompt, the stop token and
greedy decoding agree with flashmem's end to end. ``check_prompts.py`` (run with flashmem's .venv)
re-checks each record's question and prompt ids with flashmem's own code.

**Modes.** ``agnostic`` (kvpress's default): only the context is compressed, before the question is
read; the question is then read in full on top of the compressed cache. ``aware``: as kvpress's
evaluation option ``compress_questions`` (``context = context + question; question = ""``): the
question suffix is appended to the context and compressed with it, and only the chat turn's end and
the assistant header are read afterwards (the question survives only as far as the press keeps it).

**The budget: KV entries kept per layer.** ``--kept K``. Presses with attention sinks of their own
(StreamingLLM, ExpectedAttention, KVzip; ``--n-sink``, default 4) keep ``n_sink + K`` entries per
layer (the sinks plus K more); SnapKV and Knorm keep ``K``. The press's ``compression_ratio`` is
computed per item from the number ``n`` of tokens it compresses so that exactly that many remain:

* ScorerPress family (streaming, snapkv, knorm, expected_attention): kvpress keeps
  ``compute_n_kept(n, r) = max(1, int(n * (1 - r)))`` per layer and KV head (top-k of the scores);
  ``r = 1 - (T + 0.5) / n`` makes that ``T`` (checked with kvpress's own ``compute_n_kept`` before
  each item). StreamingLLM's score zeroes ``n - int(n * (1 - r))`` entries after its sinks, so its
  top ``T`` are the ``n_sink`` sinks and the ``T - n_sink = K`` most recent tokens; ExpectedAttention
  pads its sinks with the highest score, so it keeps them and the best ``K``. SnapKV always keeps
  its observation window (the last ``--window-size`` tokens, kvpress default 64, scored max + 1):
  with ``K`` below the window it keeps ``K`` window tokens in top-k order and no attention-chosen
  token at all; the script says so in a note.
* KVzip (``layerwise=True``, so every layer gets the same budget): it prunes
  ``int(H * n * r)`` entries per layer across its ``H`` KV heads, head-wise (a head can keep more
  than another), by masking them in attention rather than shortening the cache. ``r = (H * (n - T)
  + 0.5) / (H * n)`` prunes exactly ``H * (n - T)``: ``T`` per head on average, its ``n_sink`` sinks
  (forced) in every head.

After each item the cache is inspected: every layer's length must be ``T`` (ScorerPress), or for
KVzip the physical length ``n`` with exactly ``H * (n - T)`` masked entries (kvpress's
``masked_key_indices`` on each attention module). Each record stores the ratio, ``n``, ``T`` and
the per-layer count (per head for KVzip); a mismatch stops the run.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = Path.home() / ".cache" / "flashmem" / "smollm2-135m"
PRESSES = ("streaming", "snapkv", "knorm", "expected_attention", "kvzip", "none")  # none: the control, no compression
SINK_PRESSES = ("streaming", "expected_attention", "kvzip")  # they keep n_sink sinks besides the K
PROMPT_LABEL = "chat template, greedy"  # flashmem eval's identity label for --prompt plain


def light_flashmem():
    """flashmem's pure-Python modules, without running flashmem/__init__.py (see the docstring)."""
    heavy_before = {m for m in ("torch", "transformers") if m in sys.modules}
    existing = sys.modules.get("flashmem")
    if existing is None:
        pkg = types.ModuleType("flashmem")
        pkg.__path__ = [str(REPO / "src" / "flashmem")]
        pkg.__doc__ = "flashmem's source folder, without its package face (kvpress environment)"
        sys.modules["flashmem"] = pkg
    elif Path(existing.__path__[0]).resolve() != (REPO / "src" / "flashmem").resolve():
        raise SystemExit(f"another flashmem is already imported: {existing.__path__}")
    from flashmem import errors, files
    from flashmem.data import answers, recall
    from flashmem.evaluation import records, report

    heavy = {m for m in ("torch", "transformers") if m in sys.modules} - heavy_before
    if heavy:
        raise SystemExit(f"importing flashmem's data modules pulled in {sorted(heavy)}")
    return types.SimpleNamespace(recall=recall, answers=answers, records=records, report=report, files=files,
                                 errors=errors)


def question_sha(question: str) -> str:
    """flashmem.evaluation.evaluate.question_sha, restated (that module imports the model stack)."""
    return hashlib.sha1(question.encode()).hexdigest()[:12]


def ids_sha(ids: list[int]) -> str:
    return hashlib.sha1(",".join(map(str, ids)).encode()).hexdigest()[:12]


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()[:16]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(DEFAULT_MODEL), help="a local model folder (default: %(default)s)")
    p.add_argument("--data", required=True, help="a recall spec, e.g. recall:context=512,facts=16 (give it "
                   "exactly as the flashmem run you compare with did: compare matches the string)")
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int, default=None, help="first N items only")
    p.add_argument("--press", required=True, choices=PRESSES)
    p.add_argument("--kept", type=int, default=None, metavar="K",
                   help="KV entries kept per layer from the compressed tokens, besides the sinks of "
                        f"{', '.join(SINK_PRESSES)} (required, except with --press none)")
    p.add_argument("--mode", default="agnostic", choices=("agnostic", "aware"))
    p.add_argument("--n-sink", type=int, default=4, help=f"attention sinks of {', '.join(SINK_PRESSES)}")
    p.add_argument("--window-size", type=int, default=64, help="SnapKV's observation window (kvpress default 64)")
    p.add_argument("--kernel-size", type=int, default=5, help="SnapKV's pooling kernel (kvpress default 5)")
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--out", required=True, metavar="FILE.json")
    p.add_argument("--quiet", action="store_true", help="no per-item lines")
    args = p.parse_args(argv)
    if args.press == "none":
        if args.kept is not None or args.mode != "agnostic":
            p.error("--press none (the whole prompt, uncompressed) takes no --kept and no --mode aware")
    elif args.kept is None or args.kept < 1:
        p.error("--kept K >= 1 is required")
    if args.limit is not None and args.limit < 1:
        p.error("--limit must be >= 1")
    return args


def build_press(kvpress, args, n_heads_kv: int):
    """The press with every setting fixed but compression_ratio (set per item by ratio_for); None for none."""
    if args.press == "none":
        return None
    if args.press == "streaming":
        return kvpress.StreamingLLMPress(n_sink=args.n_sink)
    if args.press == "snapkv":
        return kvpress.SnapKVPress(window_size=args.window_size, kernel_size=args.kernel_size)
    if args.press == "knorm":
        return kvpress.KnormPress()
    if args.press == "expected_attention":
        return kvpress.ExpectedAttentionPress(n_sink=args.n_sink)
    return kvpress.KVzipPress(n_sink=args.n_sink, layerwise=True)


def target_kept(args) -> int | None:
    if args.press == "none":
        return None
    return args.kept + (args.n_sink if args.press in SINK_PRESSES else 0)


def ratio_for(args, n: int, n_heads_kv: int) -> float:
    """compression_ratio that leaves exactly target_kept(args) entries of n (per layer; see the docstring)."""
    from kvpress.utils import compute_n_kept

    t = target_kept(args)
    if not t < n:
        raise SystemExit(f"cannot keep {t} of {n} tokens: nothing would be compressed")
    if args.press == "kvzip":
        r = (n_heads_kv * (n - t) + 0.5) / (n_heads_kv * n)
        assert int(n_heads_kv * n * r) == n_heads_kv * (n - t), (n, t, r)
    else:
        r = 1.0 - (t + 0.5) / n
        assert compute_n_kept(n, r) == t, (n, t, r)
        if args.press == "streaming":
            assert n - int(n * (1 - r)) == n - t  # StreamingLLMPress.score's own count of pruned tokens
    assert 0.0 <= r < 1.0, r
    return r


def kept_per_layer(model, cache, args, n: int, n_heads_kv: int) -> list:
    """After compression: per layer the entries left (ScorerPress: cache length; KVzip: unmasked per head)."""
    if args.press != "kvzip":
        return [int(layer.keys.shape[2]) for layer in cache.layers]
    out = []
    for layer, block in zip(cache.layers, model.model.layers):
        assert int(layer.keys.shape[2]) == n, (layer.keys.shape, n)  # KVzip masks, it does not shorten
        masked = getattr(block.self_attn, "masked_key_indices", None)
        heads = [n] * n_heads_kv
        if masked is not None:
            for h in masked[1].tolist():
                heads[h] -= 1
        out.append(heads)
    return out


def check_kept(kept: list, args) -> None:
    t = target_kept(args)
    if t is None:
        return
    if args.press == "kvzip":
        bad = [i for i, heads in enumerate(kept) if sum(heads) != t * len(heads)]
    else:
        bad = [i for i, length in enumerate(kept) if length != t]
    if bad:
        raise SystemExit(f"kept entries differ from the budget {t} in layers {bad[:5]}: {[kept[i] for i in bad[:5]]}")


def describe_kept(kept: list) -> str:
    if kept and isinstance(kept[0], list):  # KVzip: per head
        totals = sorted({sum(h) for h in kept})
        lo, hi = min(min(h) for h in kept), max(max(h) for h in kept)
        return f"{len(kept)} layers x {totals} entries over {len(kept[0])} heads (per head {lo}..{hi})"
    values = sorted(set(kept))
    return f"{len(kept)} layers x {values[0]}" if len(values) == 1 else f"per layer {kept}"


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    fm = light_flashmem()
    recall = fm.recall
    if not recall.is_recall_spec(args.data):
        raise SystemExit(f"--data must be a recall spec (recall or recall:key=value,...), got {args.data!r}")
    spec = recall.parse_spec(args.data)
    examples, data_report = recall.load_recall(args.data, args.split, args.limit)

    import torch
    import transformers
    from importlib.metadata import version

    torch.set_num_threads(args.threads)
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    import kvpress  # registers the "kv-press-text-generation" pipeline and patches attention
    from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache, pipeline

    model_dir = Path(args.model).expanduser()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    pipe = pipeline("kv-press-text-generation", model=model, tokenizer=tokenizer)
    n_heads_kv = model.config.num_key_value_heads
    press = build_press(kvpress, args, n_heads_kv)

    notes = []
    if args.press == "snapkv" and args.kept < args.window_size:
        notes.append(f"SnapKV keeps its last {args.window_size} tokens (observation window) first: with only "
                     f"{args.kept} kept, all are window tokens picked in top-k tie order, none by attention")
    kv_settings = ({f.name: getattr(press, f.name) for f in dataclasses.fields(press) if f.name != "compression_ratio"}
                   if press is not None else None)
    label = "kvpress-none (no compression)" if press is None else f"kvpress-{args.press}/{args.mode}/K{args.kept}"
    identity = {
        "model": str(model_dir), "model_fingerprint": file_digest(model_dir / "model.safetensors"),
        "dtype": str(model.dtype).removeprefix("torch."), "method": label,
        "data": args.data, "split": args.split, "max_new_tokens": args.max_new_tokens, "prompt": PROMPT_LABEL,
        "nll": False,
        "kvpress": {
            "version": version("kvpress"), "press": type(press).__name__ if press else None, "press_settings": kv_settings,
            "mode": args.mode, "kept_per_layer": args.kept,
            "n_sink": args.n_sink if args.press in SINK_PRESSES else None,
            "entries_per_layer": target_kept(args),
            "compression_ratio": None if press is None else ("per item: kvzip r = (H(n-T)+0.5)/(Hn), H KV heads" if args.press == "kvzip"
                                  else "per item: r = 1 - (T+0.5)/n") + f"; T = {target_kept(args)} entries kept "
                                 "per layer of the n tokens compressed",
            "pipeline": "kv-press-text-generation",
        },
        "transformers": transformers.__version__, "torch": torch.__version__,
    }
    settings = {**identity, "memory": None, "limit": args.limit, "batch_size": 1, "data_dir": None,
                "data_source": data_report.path, "notes": notes, "machine": fm.report.machine_info(),
                "config": vars(args)}
    out = Path(args.out)
    records = fm.records.RecordFile(out.with_suffix(".records.jsonl"), identity, settings)
    changed = [ex.line for ex in examples if ex.line in records.done
               and records.done[ex.line].get("question_sha") != question_sha(ex.question)]
    if changed:
        raise SystemExit(f"{records.path} holds other questions under the same ids (e.g. {changed[:3]})")
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    todo = [ex for ex in examples if ex.line not in records.done]
    if records.done:
        print(f"resuming: {len(examples) - len(todo)} of {len(examples)} items already in {records.path}",
              file=sys.stderr)

    # The answer's token ids: the LM's argmax at each call the pipeline makes after the prefill
    # (the prefill itself runs model.model, the decoder without the LM head, so it is not seen here).
    generated: list[int] = []
    hook = model.register_forward_hook(lambda mod, inp, output: generated.append(int(output.logits[0, -1].argmax())))
    try:
        for ex in todo:
            generated.clear()
            row = run_item(pipe, press, ex, spec, args, recall, n_heads_kv, generated, DynamicCache)
            row["correct"] = bool(fm.answers.is_correct(row["prediction"], ex.final, ex.kind))
            records.append([row])
            if not args.quiet:
                print(f"item {ex.line}: {'RIGHT' if row['correct'] else 'wrong'} (value {ex.final}) "
                      f"answer {row['prediction']!r}; kept {describe_kept(row['kept_per_layer'])} of "
                      f"{row['compressed_tokens']} compressed tokens (ratio {row['compression_ratio']:.4f}); "
                      f"{row['gen_tokens']} tokens", file=sys.stderr)
    finally:
        hook.remove()

    summary = fm.report.summarize([records.done[ex.line] for ex in examples], settings)
    summary["records_file"] = records.path.name
    text = fm.report.summary_markdown(summary)
    fm.files.atomic_write_text(out, json.dumps(summary, indent=2, default=str) + "\n")
    fm.files.atomic_write_text(out.with_suffix(".md"), text + "\n")
    acc = summary["accuracy"]
    print(f"{identity['method']}: {acc['correct']}/{acc['n']} right; summary {out}", file=sys.stderr)
    return 0


def run_item(pipe, press, ex, spec, args, recall, n_heads_kv: int, generated: list[int], cache_type) -> dict:
    """One item through kvpress's pipeline; the record in flashmem's eval format plus the press's facts."""
    tok = pipe.tokenizer
    index = ex.line - 1
    doc = recall.make_document(spec, args.split, index)
    suffix = recall.question_suffix(doc.facts[0])
    if ex.question != doc.text + suffix:
        raise SystemExit(f"item {ex.line}: the question is not document + question suffix")
    whole_text = tok.apply_chat_template([{"role": "user", "content": ex.question}], tokenize=False,
                                         add_generation_prompt=True)
    whole = tok.encode(whole_text, add_special_tokens=False)
    context, question = (doc.text, suffix) if args.mode == "agnostic" else (doc.text + suffix, "")
    call = {"question": question} if question else {}
    # The pipeline's own preprocessing, to check it sends flashmem's prompt, split where we expect.
    pre = pipe.preprocess(context, questions=[question], answer_prefix="", max_context_length=int(1e10))
    context_ids, question_ids = pre["context_ids"][0].tolist(), pre["questions_ids"][0][0].tolist()
    if context_ids + question_ids != whole:
        raise SystemExit(f"item {ex.line}: kvpress's context + question ids differ from flashmem's prompt ids")
    n = len(context_ids)
    if press is not None:
        press.compression_ratio = ratio_for(args, n, n_heads_kv)
    cache = cache_type()
    start = time.perf_counter()
    answer = pipe(context, press=press, max_new_tokens=args.max_new_tokens, cache=cache, **call)["answer"]
    seconds = time.perf_counter() - start
    tokens = list(generated)
    if tok.decode(tokens, skip_special_tokens=True) != answer:
        raise SystemExit(f"item {ex.line}: the hooked token ids do not decode to the pipeline's answer")
    kept = kept_per_layer(pipe.model, cache, args, n, n_heads_kv)
    check_kept(kept, args)
    return {
        "id": ex.line, "question_sha": question_sha(ex.question), "final": ex.final, "prediction": answer,
        "correct": None, "nll": None, "nll_tokens": 0, "nll_insertions": [], "gen_tokens": len(tokens),
        "consolidations": 0, "prompt_memory": False, "decode_steps": max(len(tokens) - 1, 0),
        "trigger_steps": None, "signal_by_position": None, "consolidation_steps": [],
        "gen_seconds": seconds, "nll_seconds": 0.0,
        # kvpress's facts about this item
        "prompt_tokens": len(whole), "prompt_ids_sha": ids_sha(whole), "compressed_tokens": n,
        "uncompressed_tokens": len(question_ids), "compression_ratio": press.compression_ratio if press else 0.0,
        "kept_per_layer": kept, "answer_ids": tokens,
    }


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as err:  # flashmem's user-facing errors (a settings mismatch, a bad spec): message only
        if type(err).__name__ != "FlashmemError":
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
