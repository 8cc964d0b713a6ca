"""The lm-evaluation-harness model: parity with the harness's own `hf` model (code this project did not
write) with memory off, the teacher-forced NLL path with memory on, a local GSM8K task end to end
through `flashmem lm-eval`, and the extra staying optional. Tests that need the harness skip without it
(CI installs `.[test]`)."""
import json
import os
import subprocess
import sys

import pytest
import torch
from tiny_assets import arithmetic_rows, make_tiny_model_dir, write_jsonl

from flashmem.api import FlashMem
from flashmem.config import GenerationConfig
from flashmem.decoding.generation import generate
from flashmem.memory.registry import build_memory, default_config
from flashmem.models.backbone import Backbone
from flashmem.models.testing import tiny_model, tiny_tokenizer
from flashmem.training.scoring import find_insertions

CONTEXTS = ["Hi there", "Question: what is 2+2?\nAnswer:", "abc", "The cat sat on the"]
PAIRS = [("The cat sat on", " the mat"), ("", "hello world"), ("2 + 3 = ", "5"),
         ("Question: x?\nAnswer:", " 12 apples"), ("a", "b")]


@pytest.fixture(scope="module")
def harness():
    return pytest.importorskip("lm_eval")


@pytest.fixture(scope="module")
def tiny(harness):
    """One tiny Llama served twice: through flashmem (no memory) and through the harness's HFLM."""
    from lm_eval.models.huggingface import HFLM

    from flashmem.integrations.lm_eval import FlashMemLM

    tokenizer = tiny_tokenizer()
    model = tiny_model("llama", vocab_size=len(tokenizer))
    ours = FlashMemLM(pretrained=FlashMem(Backbone(model, tokenizer, name="tiny")), batch_size=3)
    hf = HFLM(pretrained=model, tokenizer=tiny_tokenizer(), device="cpu", batch_size=2)
    return ours, hf


def instances(kind: str, args: list[tuple]) -> list:
    from lm_eval.api.instance import Instance

    return [Instance(kind, {}, a, i) for i, a in enumerate(args)]


def greedy_pair(lm, n: int = 2) -> tuple[str, str]:
    """A (context, continuation) whose continuation is the model's own greedy text (ASCII, so it
    tokenises back to the same ids): is_greedy must then be True."""
    bb = lm.fm.backbone
    for i in range(200):
        context = f"seed {i}:"
        ids, mask = lm.tok_batch_encode([context])
        tokens = generate(bb, ids, mask, None, GenerationConfig(max_new_tokens=n), monitor=False).tokens[0]
        text = bb.tokenizer.decode(tokens)
        if len(tokens) == n and text.isascii() and lm.tok_encode(context + text)[len(ids[0]):] == tokens:
            return context, text
    pytest.skip("no printable greedy continuation found")


def gen_args(contexts: list[str], until: list[str], max_gen_toks: int = 20) -> list[tuple]:
    return [(c, {"until": until, "max_gen_toks": max_gen_toks, "do_sample": False}) for c in contexts]


def test_loglikelihood_matches_the_harness_hf_model(tiny):
    ours, hf = tiny
    requests = instances("loglikelihood", PAIRS + [greedy_pair(ours)])
    mine, theirs = ours.loglikelihood(requests, disable_tqdm=True), hf.loglikelihood(requests, disable_tqdm=True)
    assert [g for _, g in mine] == [g for _, g in theirs] and mine[-1][1] and not mine[0][1]
    for (a, _), (b, _) in zip(mine, theirs):
        assert abs(a - b) < 1e-4, (a, b)


def test_loglikelihood_rolling_matches_over_several_windows(tiny):
    ours, hf = tiny
    assert ours.max_length == hf.max_length == 512
    long_text = "The quick brown fox jumps over the lazy dog. " * 15  # 675 byte tokens: two windows
    requests = instances("loglikelihood_rolling", [(long_text,), ("short one",)])
    mine, theirs = ours.loglikelihood_rolling(requests, disable_tqdm=True), hf.loglikelihood_rolling(requests, disable_tqdm=True)
    assert all(abs(a - b) < 1e-3 for a, b in zip(mine, theirs)), (mine, theirs)  # a sum over ~700 fp32 terms


def test_generate_until_gives_the_hf_models_greedy_text_and_honours_stop_strings(tiny):
    ours, hf = tiny
    free = hf.generate_until(instances("generate_until", gen_args(CONTEXTS, [])), disable_tqdm=True)
    assert ours.generate_until(instances("generate_until", gen_args(CONTEXTS, [])), disable_tqdm=True) == free
    stop = free[1][4:6]  # a string that appears mid-answer in one row
    stopped = instances("generate_until", gen_args(CONTEXTS, [stop]))
    mine = ours.generate_until(stopped, disable_tqdm=True)
    assert mine == hf.generate_until(stopped, disable_tqdm=True)
    assert mine[1] == free[1].split(stop)[0] and len(mine[1]) < len(free[1])
    short = instances("generate_until", gen_args(CONTEXTS, [], max_gen_toks=5))
    assert ours.generate_until(short, disable_tqdm=True) == hf.generate_until(short, disable_tqdm=True)


def test_chat_template_is_the_tokenizers(tiny):
    ours, hf = tiny
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]
    assert ours.apply_chat_template(chat) == hf.apply_chat_template(chat)
    assert ours.chat_template(True) == hf.chat_template(True) and ours.tokenizer_name


@pytest.fixture(scope="module")
def with_memory(harness):
    """An untrained, seeded FlashMem memory that fires along the continuation (every 3 tokens, twice)."""
    from flashmem.integrations.lm_eval import FlashMemLM

    tokenizer = tiny_tokenizer()
    bb = Backbone(tiny_model("llama", vocab_size=len(tokenizer)), tokenizer, name="tiny")
    torch.manual_seed(0)
    config = default_config("flashmem", trigger="always", budget=2, min_gap=3, num_latents=4)
    memory = build_memory(bb, config)
    return FlashMemLM(pretrained=FlashMem(bb, memory, trained=False, config=config), batch_size=2), bb, memory, config


def test_loglikelihood_with_memory_is_the_teacher_forced_nll(with_memory):
    lm, bb, memory, config = with_memory
    pairs = [p for p in PAIRS if p[0]]
    got = lm.loglikelihood(instances("loglikelihood", pairs), disable_tqdm=True)
    tok, fired = bb.tokenizer, 0
    for (context, continuation), (logprob, greedy) in zip(pairs, got):
        ids = tok.encode(context + continuation)
        n_context = len(tok.encode(context.rstrip(" ")))  # the harness moves a context's trailing spaces over
        prompt, answer = torch.tensor(ids[:n_context]), torch.tensor(ids[n_context:])
        scored = find_insertions(bb, memory, prompt, answer, policy=config)
        assert logprob == pytest.approx(-float(scored.nll), abs=1e-5)
        fired += len(scored.insertions)
        # the same tokens forced through free decoding: the other path of the engine
        forced = generate(bb, prompt[None], torch.ones(1, len(prompt), dtype=torch.long), memory,
                          GenerationConfig(max_new_tokens=len(answer)), forced=answer[None], policy=config,
                          keep_logits=True)
        assert logprob == pytest.approx(float(forced.logprobs.sum()), abs=1e-4)
        argmax = torch.stack([step[0].argmax() for step in forced.step_logits])
        assert greedy == bool((argmax == answer).all())
        plain = find_insertions(bb, None, prompt, answer)
        assert abs(logprob + float(plain.nll)) > 1e-3, "memory on and off scored the same"
    assert fired, "the memory must fire along some continuation for this check to mean anything"


def test_generate_until_with_memory_is_flashmems_generation(with_memory):
    lm, bb, memory, config = with_memory
    got = lm.generate_until(instances("generate_until", gen_args(CONTEXTS, [], max_gen_toks=12)), disable_tqdm=True)
    for context, text in zip(CONTEXTS, got):
        ids, mask = lm.tok_batch_encode([context])
        result = generate(bb, ids, mask, memory, GenerationConfig(max_new_tokens=12), policy=config)
        assert text == bb.tokenizer.decode(result.tokens[0], skip_special_tokens=True)
        assert result.traces[0].consolidations, "memory must be made during decoding"


def test_policy_overrides_and_bad_model_args(harness):
    from flashmem.errors import FlashmemError
    from flashmem.integrations.lm_eval import FlashMemLM

    tokenizer = tiny_tokenizer()
    bb = Backbone(tiny_model("llama", vocab_size=len(tokenizer)), tokenizer, name="tiny")
    memory = build_memory(bb, default_config("flashmem"))
    lm = FlashMemLM(pretrained=FlashMem(bb, memory, trained=False), threshold=3, budget=0)
    assert lm.fm.config.threshold == 3.0 and lm.fm.config.budget == 0
    with pytest.raises(FlashmemError, match="unknown flashmem model_args"):
        FlashMemLM(pretrained=FlashMem(bb, memory, trained=False), thresold=3)
    with pytest.raises(FlashmemError, match="need a memory"):
        FlashMemLM(pretrained=FlashMem(bb, None), budget=1)
    with pytest.raises(FlashmemError, match="budget must be"):
        FlashMemLM(pretrained=FlashMem(bb, memory, trained=False), budget=-1)


def test_local_gsm8k_task_end_to_end_through_the_cli(harness, tmp_path, monkeypatch):
    """The shipped gsm8k_local YAML (found through the default --include_path) on 4 questions of a local
    copy named by --data-dir, through `flashmem lm-eval`: the harness's results and samples files appear."""
    from flashmem.cli import main

    data = tmp_path / "shared" / "data" / "gsm8k"
    data.mkdir(parents=True)
    write_jsonl(data / "train.jsonl", arithmetic_rows(12))
    write_jsonl(data / "test.jsonl", arithmetic_rows(20)[8:])
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("FLASHMEM_CACHE", str(tmp_path / "cache"))
    model = make_tiny_model_dir(tmp_path / "model")
    out = tmp_path / "out"
    argv = ["lm-eval", "--threads", "1", "--data-dir", str(tmp_path / "shared" / "data"), "--model_args", f"pretrained={model},memory=untrained,max_new_tokens=8",
            "--tasks", "gsm8k_local", "--limit", "4", "--batch_size", "2", "--output_path", str(out), "--log_samples"]
    assert main(argv) == 0
    results = list(out.rglob("results_*.json"))
    samples = list(out.rglob("samples_gsm8k_local_*.jsonl"))
    assert len(results) == 1 and len(samples) == 1
    summary = json.loads(results[0].read_text())
    assert summary["n-samples"]["gsm8k_local"]["effective"] == 4
    assert "exact_match,strict-match" in summary["results"]["gsm8k_local"]
    assert summary["config"]["model"] == "flashmem"
    rows = [json.loads(line) for line in samples[0].read_text().splitlines()]
    assert {r["doc_id"] for r in rows} == {0, 1, 2, 3}  # one row per question and filter
    assert all(r["arguments"]["gen_args_0"]["arg_0"].count("Question: What is") == 6 for r in rows)  # 5-shot


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})


def test_importing_flashmem_never_imports_lm_eval():
    done = run_python("import sys, flashmem, flashmem.cli, flashmem.integrations; print('lm_eval' in sys.modules)")
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr


def test_missing_extra_is_one_clear_line():
    code = ("import sys; sys.modules['lm_eval'] = None\n"
            "from flashmem.cli import main; raise SystemExit(main(['lm-eval', '--tasks', 'gsm8k_local']))")
    done = run_python(code)
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and errors == ["flashmem lm-eval: error: lm-eval is not installed: "
                                              "pip install 'flashmem[lm-eval]'"], done.stderr


def test_local_mawps_task_renders_numeric_targets(harness, tmp_path, monkeypatch):
    """mawps_local on a local copy: float targets are written as %g (43.0 -> "43"), and the run completes."""
    from flashmem.cli import main

    data = tmp_path / "shared" / "data" / "mawps"
    data.mkdir(parents=True)
    write_jsonl(data / "test.jsonl", [{"input": "Joan had 70 shells and gave some away. She has 27. How many?",
                                       "target": 43.0, "type": "singleeq", "idx": 0},
                                      {"input": "Half of one?", "target": 0.5, "type": "singleeq", "idx": 1}])
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    monkeypatch.setenv("FLASHMEM_DATA_DIR", str(tmp_path / "shared" / "data"))
    model = make_tiny_model_dir(tmp_path / "model")
    out = tmp_path / "out"
    assert main(["lm-eval", "--model_args", f"pretrained={model},max_new_tokens=4", "--device", "cpu",
                 "--tasks", "mawps_local", "--output_path", str(out), "--log_samples"]) == 0
    rows = [json.loads(line) for line in next(out.rglob("samples_mawps_local_*.jsonl")).read_text().splitlines()]
    assert {r["doc_id"]: r["target"] for r in rows} == {0: "43", 1: "0.5"}
    assert rows[0]["arguments"]["gen_args_0"]["arg_0"].startswith("Question: Joan had 70")


def test_local_task_without_a_data_folder_is_one_clear_error(harness, monkeypatch):
    """No --data-dir and no $FLASHMEM_DATA_DIR: asking for a shipped task names both, and nothing is guessed."""
    from flashmem.errors import FlashmemError
    from flashmem.integrations.lm_eval import cli_evaluate

    monkeypatch.delenv("FLASHMEM_DATA_DIR", raising=False)
    with pytest.raises(FlashmemError, match=r"gsm8k_local .*--data-dir FOLDER or set \$FLASHMEM_DATA_DIR"):
        cli_evaluate(["--tasks", "gsm8k_local", "--limit", "1"])
