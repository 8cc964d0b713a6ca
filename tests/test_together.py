"""`flashmem eval --also`: several runs in one pass share each batch's prompt prefill and write exactly
what they write one at a time."""
from contextlib import contextmanager
from dataclasses import replace

import pytest
import torch
from tiny_assets import arithmetic_rows, make_tiny_model_dir, write_jsonl

import flashmem.evaluation.evaluate as evaluate_module
from flashmem.cli import main
from flashmem.config import GenerationConfig
from flashmem.decoding.engine import shared_prefills
from flashmem.decoding.generation import generate
from flashmem.evaluation.records import read_records
from flashmem.memory.registry import build_memory, default_config
from flashmem.models.backbone import Backbone
from flashmem.models.loader import load_backbone

TIMES = ("gen_seconds", "nll_seconds")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("together_assets")
    return {"model": str(make_tiny_model_dir(root / "model")), "data": str(write_jsonl(root / "q.jsonl", arithmetic_rows(7)))}


def base_argv(assets, out):
    return ["eval", "--model", assets["model"], "--data", assets["data"], "--limit", "5", "--batch-size", "2",
            "--max-new-tokens", "6", "--method", "flashmem", "--untrained", "--out", str(out)]


def records(out):
    return [{k: v for k, v in r.items() if k not in TIMES} for r in read_records(out.with_suffix(".records.jsonl"))[1]]


# FlashMem first: the runs after it decode from copies of a cache that FlashMem's decoding already grew.
ALSO = {"vanilla": "--method vanilla", "foreign": "--ablate foreign-context", "mean": "--ablate mean-latents",
        "memgen": "--method memgen --untrained"}


def test_runs_in_one_pass_write_what_they_write_apart(assets, tmp_path, monkeypatch):
    apart, together = tmp_path / "apart", tmp_path / "together"
    apart.mkdir(), together.mkdir()
    assert main(base_argv(assets, apart / "flashmem.json")) == 0
    for name, flags in ALSO.items():
        argv = base_argv(assets, apart / f"{name}.json") + flags.split()  # the later --method wins
        assert main([a for a in argv if a != "--untrained"] if name == "vanilla" else argv) == 0

    memos = []
    real = evaluate_module.shared_prefills

    @contextmanager
    def spy(capacity):
        with real(capacity) as memo:
            memos.append(memo)
            yield memo
    monkeypatch.setattr(evaluate_module, "shared_prefills", spy)
    also = [arg for name, flags in ALSO.items() for arg in ("--also", f"{flags} --out {together / name}.json")]
    assert main(base_argv(assets, together / "flashmem.json") + also) == 0

    for name in ("flashmem", *ALSO):
        assert records(together / f"{name}.json") == records(apart / f"{name}.json"), name
    # Three batches (5 questions by 2); each batch's prompts were encoded once for the five runs.
    assert len(memos) == 1 and memos[0].hits >= 3 * 4


def test_a_shared_prefill_does_not_leak_one_decoding_into_the_next(assets):
    bb: Backbone = load_backbone(assets["model"])
    torch.manual_seed(0)
    memory = build_memory(bb, replace(default_config("flashmem"), threshold=0.0, min_gap=2))  # fires during decoding too
    ids = torch.randint(3, bb.vocab_size, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding on one row
    gen = GenerationConfig(max_new_tokens=12)
    plain = generate(bb, ids, mask, gen=gen).tokens
    with shared_prefills(capacity=2) as memo:
        with_memory = generate(bb, ids, mask, memory, gen)
        again = generate(bb, ids, mask, gen=gen).tokens
    assert memo.hits == 1 and memo.misses == 1
    assert all(trace.consolidations for trace in with_memory.traces)  # the memory grew its copy of the cache
    assert again == plain
    assert with_memory.tokens == generate(bb, ids, mask, memory, gen).tokens


@pytest.mark.parametrize("also, message", [
    (["--also", "--limit 3 --out x.json"], "--limit is shared by every run"),
    (["--also", "--method vanilla --no-nll"], "needs its own --out"),
    (["--also", "--bogus 1 --out y.json"], "unrecognized arguments: --bogus"),
    (["--also", "--ablate nothing --out y.json"], "invalid choice"),
    (["--also", "--method vanilla --out SAME"], "two runs would write the same result file"),
])
def test_also_errors_name_the_flag(assets, tmp_path, capsys, also, message):
    out = tmp_path / "main.json"
    also = [a.replace("SAME", str(out)) for a in also]
    assert main(base_argv(assets, out) + also) == 2
    assert message in capsys.readouterr().err
