"""How much memory a decoding run takes: the CUDA allocator's peak on a GPU, the resident set's
high-water mark on Linux CPUs (reset before each run, read in a subprocess per method so that one
method's allocations never hide another's)."""
from __future__ import annotations

import json
import resource
import subprocess
import sys
from contextlib import contextmanager

import torch

WORKER_TAG = "FLASHMEM_BENCH_WORKER "
MB = 1024 * 1024


@contextmanager
def cuda_peak(device: torch.device):
    """Yields a dict that, on exit, holds the peak CUDA allocation of the block (MB) and its growth above
    what was allocated before it (the model, the memory's weights). Empty on the CPU."""
    out: dict = {}
    if device.type != "cuda":
        yield out
        return
    # No empty_cache here: it would hand every cached block back, and each run would then pay (and
    # time) fresh cudaMallocs for its growing cache; the allocated peak does not depend on the cache.
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    yield out
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    out.update(cuda_peak_mb=peak / MB, cuda_above_baseline_mb=(peak - base) / MB)


def rss_mb() -> float:
    """This process's peak resident set so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MB if sys.platform == "darwin" else peak / 1024


def reset_peak_rss() -> bool:
    """Linux: restart the kernel's peak-RSS counter (VmHWM) from the current RSS; False where impossible.

    Needed because ru_maxrss never goes down: it holds the loading spike, and after fork + exec even
    the parent's peak (Linux records the old mm's high-water mark at exec).
    """
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return proc_status_mb("VmHWM") is not None
    except OSError:
        return False


def proc_status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def run_workers(module: str, specs: dict[str, dict]) -> tuple[dict[str, dict], list[str]]:
    """Run `python -m module --worker SPEC` for every spec, side by side; ({name: result}, notes)."""
    procs = {name: subprocess.Popen([sys.executable, "-m", module, "--worker", json.dumps(spec)],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, spec in specs.items()}
    out, notes = {}, []
    for name, proc in procs.items():
        stdout, stderr = proc.communicate()
        lines = [ln for ln in stdout.splitlines() if ln.startswith(WORKER_TAG)]
        if proc.returncode != 0 or not lines:
            last = (stderr.strip().splitlines() or [""])[-1]
            notes.append(f"memory of {name} not measured: worker exited {proc.returncode}: {last}")
            continue
        out[name] = json.loads(lines[-1][len(WORKER_TAG):])
    return out, notes
