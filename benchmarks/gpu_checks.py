"""Correctness of the GPU path, checked on the GPU itself (the unit tests run on CPUs).

    python benchmarks/gpu_checks.py OUT.json
    GPU_CHECKS_DEVICE=cpu REAL_MODEL=random:smollm2-135m python benchmarks/gpu_checks.py   # the script itself, here

Each check prints PASS or FAIL with what it compared, and all go to OUT.json:
- plain decoding equals transformers' greedy generate (fp32, tiny model on the GPU);
- decoding with injected latents equals recomputing the whole sequence without a cache;
- seeded sampling on the GPU (the generator lives on the device) repeats, another seed differs;
- host round trips: the decoding loop waits for the device at most once per step (CUDA sync debug mode);
- training through a bf16 backbone under autocast: float32 memory weights get finite gradients, the
  backbone none, and `flashmem train` runs two steps end to end (bf16 by default on CUDA);
- a real architecture (random:qwen2.5-1.5b, bf16) generates with memory at 2k context;
- the compiled step (GenerationConfig.compile, CUDA graphs on a GPU) gives the eager path's tokens,
  consolidation steps and entropies (1e-3), plain and with FlashMem's consolidations (fp32, tiny model).
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import traceback
import warnings
from dataclasses import replace
from pathlib import Path

import torch

from flashmem.cli import main as cli_main
from flashmem.config import GenerationConfig
from flashmem.decoding.engine import decode_step, prefill
from flashmem.decoding.generation import generate
from flashmem.memory.registry import build_memory, default_config
from flashmem.models.backbone import Backbone
from flashmem.models.loader import load_backbone
from flashmem.models.testing import make_tiny_model_dir, tiny_model, tiny_tokenizer
from flashmem.training.scoring import training_nll

CUDA = torch.device(os.environ.get("GPU_CHECKS_DEVICE", "cuda"))
REAL_MODEL = os.environ.get("REAL_MODEL", "random:qwen2.5-1.5b")


def tiny(family: str = "llama") -> Backbone:
    tok = tiny_tokenizer()
    return Backbone(tiny_model(family, vocab_size=len(tok)).to(CUDA), tok)


def batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 250, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    return ids.masked_fill(mask == 0, 0).to(CUDA), mask.to(CUDA)


def firing(bb: Backbone, threshold: float = 0.0):
    torch.manual_seed(0)
    memory = build_memory(bb, default_config("flashmem", num_latents=3, budget=3, min_gap=2, threshold=threshold))
    with torch.no_grad():
        memory.out_proj.weight.normal_(0.0, 0.05)
    return memory


def check_plain_equals_hf() -> str:
    bb = tiny()
    ids, mask = batch()
    ref = bb.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=16, do_sample=False,
                            pad_token_id=0, eos_token_id=None)
    ours = generate(bb, ids, mask, None, GenerationConfig(max_new_tokens=16), monitor=True)
    assert ours.tokens == ref[:, ids.shape[1]:].tolist()
    return "16 greedy tokens x 3 padded rows identical to model.generate"


def check_injection_equals_recomputation() -> str:
    bb = tiny("qwen2")
    ids, mask = batch(1)
    memory = firing(bb, threshold=2.0)
    res = generate(bb, ids, mask, memory, GenerationConfig(max_new_tokens=10), keep_logits=True)
    latents = dict(res.latents)
    emb = bb.model.get_input_embeddings()
    worst = 0.0
    for r in range(3):
        pieces, at = [emb(ids[r, mask[r].bool()]), latents[-1][r]], []
        for step, token in enumerate(res.tokens[r]):
            at.append(sum(p.shape[0] for p in pieces) - 1)
            pieces.append(emb(torch.tensor([token], device=CUDA)))
            if step in res.traces[r].consolidations:
                pieces.append(latents[step][r])
        seq = torch.cat(pieces)[None]
        full = bb.model(inputs_embeds=seq, position_ids=torch.arange(seq.shape[1], device=CUDA)[None]).logits[0]
        for step, index in enumerate(at):
            worst = max(worst, float((full[index] - res.step_logits[step][r]).abs().max()))
    fired = sum(len(t.consolidations) for t in res.traces)
    assert fired > 0 and worst < 1e-3, (fired, worst)
    return f"{fired} consolidations; largest logit difference {worst:.2e}"


def check_seeded_sampling() -> str:
    bb = tiny()
    ids, mask = batch(2)
    cfg = GenerationConfig(max_new_tokens=12, temperature=0.9, top_p=0.9, seed=7)
    a, b = generate(bb, ids, mask, None, cfg), generate(bb, ids, mask, None, cfg)
    c = generate(bb, ids, mask, None, replace(cfg, seed=8))
    assert a.tokens == b.tokens and a.tokens != c.tokens
    return "same seed, same tokens; another seed, other tokens"


def count_syncs(run) -> int:
    """How many calls inside run() made the host wait for the device (CUDA sync debug mode)."""
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    return sum("synchron" in str(w.message).lower() for w in caught)


def check_one_host_wait_per_step() -> str:
    if CUDA.type != "cuda":
        return "skipped (not a CUDA device)"
    bb = tiny()
    ids, mask = batch(3)
    memory = firing(bb, threshold=2.0)
    generate(bb, ids, mask, memory, GenerationConfig(max_new_tokens=4))  # warm-up
    steps = 24

    def forwards_only():  # what transformers itself costs per step, without our loop
        state, _ = prefill(bb, ids, mask, 4)
        for _ in range(steps - 1):
            decode_step(bb, state, state.logits.argmax(-1), watch=False)

    base = count_syncs(forwards_only)
    fired = []
    ours = count_syncs(lambda: fired.extend(
        len(t.consolidations) for t in generate(bb, ids, mask, memory, GenerationConfig(max_new_tokens=steps),
                                                monitor=False).traces))
    # One read-back per step, a few per consolidation (the rows that fire) and at the start and the end.
    extra = ours - base
    assert extra <= steps + 4 * sum(fired) + 8, (ours, base, steps, fired)
    return f"{ours} synchronising calls against {base} for the bare forwards: {extra} ours in {steps} steps, " \
           f"{sum(fired)} consolidations"


def check_bf16_training() -> str:
    tok = tiny_tokenizer()
    bb = Backbone(tiny_model("qwen3", vocab_size=len(tok)).to(CUDA, torch.bfloat16), tok)
    memory = build_memory(bb, default_config("flashmem", num_latents=3, threshold=0.5, min_gap=3), dtype=torch.float32)
    prompt, answer = torch.randint(3, 250, (10,), device=CUDA), torch.randint(3, 250, (20,), device=CUDA)
    with torch.autocast(CUDA.type, dtype=torch.bfloat16):
        scored = training_nll(bb, memory, prompt, answer)
    scored.nll.backward()
    grads = [p.grad for p in memory.parameters()]
    assert all(g is not None and torch.isfinite(g).all() and g.dtype == torch.float32 for g in grads)
    assert all(p.grad is None for p in bb.model.parameters())
    with tempfile.TemporaryDirectory() as tmp:
        model = make_tiny_model_dir(Path(tmp) / "model")
        data = Path(tmp) / "d.jsonl"
        data.write_text("".join(json.dumps({"question": f"What is {i} + 2?", "answer": f"#### {i + 2}"}) + "\n"
                                for i in range(12)))
        code = cli_main(["train", "--model", str(model), "--data", str(data), "--out", str(Path(tmp) / "run"),
                         "--steps", "2", "--batch-size", "2", "--val-size", "2", "--device", str(CUDA)])
        log = [json.loads(line) for line in (Path(tmp) / "run" / "log.jsonl").read_text().splitlines()]
    assert code == 0 and all(torch.isfinite(torch.tensor(r["loss"])) for r in log if "loss" in r)
    return f"nll {float(scored.nll):.2f}, {len(grads)} float32 gradients; `flashmem train` 2 steps on {CUDA}"


def check_real_architecture() -> str:
    bb = load_backbone(REAL_MODEL, device=str(CUDA))
    assert bb.dtype == (torch.bfloat16 if CUDA.type == "cuda" else torch.float32) and bb.device.type == CUDA.type
    torch.manual_seed(0)
    memory = build_memory(bb, default_config("flashmem", threshold=-1.0, budget=2, min_gap=8))
    ids = torch.randint(0, 256, (2, 2048), device=CUDA)
    res = generate(bb, ids, torch.ones_like(ids), memory, GenerationConfig(max_new_tokens=32))
    fired = [len(t.consolidations) for t in res.traces]
    assert all(t.prompt_memory for t in res.traces) and fired == [2, 2], fired
    peak = f", {torch.cuda.max_memory_allocated() / 2**30:.1f} GB peak" if CUDA.type == "cuda" else ""
    return f"{REAL_MODEL}, 2 rows x 2048 context: prompt memory + {fired} consolidations{peak}"


def check_compiled_equals_eager() -> str:
    bb = tiny()
    ids, mask = batch(2)
    memory = firing(bb)
    details = []
    for label, mem in (("plain", None), ("flashmem", memory)):
        gen = dict(max_new_tokens=12, compact=False)
        eager = generate(bb, ids, mask, mem, GenerationConfig(**gen))
        compiled = generate(bb, ids, mask, mem, GenerationConfig(compile=True, **gen))
        assert eager.tokens == compiled.tokens, f"{label}: tokens differ"
        gap = 0.0
        for a, b in zip(eager.traces, compiled.traces):
            assert a.consolidations == b.consolidations, f"{label}: consolidation steps differ"
            gap = max([gap] + [abs(x - y) for x, y in zip(a.entropy, b.entropy)])
        assert gap < 1e-3, f"{label}: entropy differs by {gap:.2e}"
        fired = sum(len(t.consolidations) for t in eager.traces)
        details.append(f"{label}: 12 tokens x 3 rows identical, {fired} consolidations, entropy within {gap:.1e}")
    return "; ".join(details)


CHECKS = [check_plain_equals_hf, check_injection_equals_recomputation, check_seeded_sampling,
          check_one_host_wait_per_step, check_bf16_training, check_real_architecture, check_compiled_equals_eager]


def main(argv: list[str]) -> int:
    if CUDA.type == "cuda" and not torch.cuda.is_available():
        print("gpu_checks: no CUDA device (GPU_CHECKS_DEVICE=cpu checks the script itself)", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name() if CUDA.type == "cuda" else "cpu"
    results = {"device": name, "torch": torch.__version__}
    for check in CHECKS:
        try:
            results[check.__name__] = {"ok": True, "detail": check()}
        except Exception as err:  # report every check, whatever one of them raised
            results[check.__name__] = {"ok": False, "detail": f"{type(err).__name__}: {err}",
                                       "trace": traceback.format_exc()[-2000:]}
        print(f"{'PASS' if results[check.__name__]['ok'] else 'FAIL'} {check.__name__}: "
              f"{results[check.__name__]['detail']}", flush=True)
    if argv:
        Path(argv[0]).write_text(json.dumps(results, indent=2) + "\n")
    return 0 if all(v["ok"] for k, v in results.items() if isinstance(v, dict)) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
