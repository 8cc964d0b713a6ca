"""Small statistics helpers for reporting results: confidence intervals and a paired bootstrap.

numpy only (plus the standard library's NormalDist for z values); no scipy.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Sequence

import numpy as np

# Bootstrap resamples are drawn in blocks of at most this many index cells so that 10k
# resamples of a few thousand questions never need a gigabyte of indices at once.
_MAX_CELLS_PER_BLOCK = 2_000_000


def _z(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be strictly between 0 and 1, got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def _as_array(values: Sequence[float] | np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).ravel()
    if array.size == 0:
        raise ValueError(f"{what} is empty")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{what} contains NaN or infinite values")
    return array


def mean_ci(
    values: Sequence[float] | np.ndarray, confidence: float = 0.95
) -> tuple[float, float, float]:
    """(mean, lo, hi) with the normal approximation; lo and hi are NaN for a single value."""
    array = _as_array(values, "values")
    mean = float(array.mean())
    if array.size < 2:
        return mean, math.nan, math.nan
    half = _z(confidence) * float(array.std(ddof=1)) / math.sqrt(array.size)
    return mean, mean - half, mean + half


def proportion_ci(k: int, n: int, confidence: float = 0.95) -> tuple[float, float, float]:
    """(k/n, lo, hi) with the Wilson score interval, which stays inside [0, 1] at 0/n and n/n."""
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n > 0, got k={k}, n={n}")
    z = _z(confidence)
    p = k / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # At 0/n and n/n the bound is exactly 0 or 1; the formula leaves float dust there.
    lo = 0.0 if k == 0 else max(0.0, centre - half)
    hi = 1.0 if k == n else min(1.0, centre + half)
    return p, lo, hi


def _paired(a, b, n_boot: int, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """The two paired samples as arrays, after checking them and the bootstrap settings."""
    x, y = _as_array(a, "a"), _as_array(b, "b")
    if x.shape != y.shape:
        raise ValueError(f"paired arrays differ in length: {x.size} vs {y.size}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    _z(confidence)  # validates confidence
    return x, y


def paired_bootstrap(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    n_boot: int = 10000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, float]:
    """Bootstrap over questions of the mean per-question difference ``a - b``.

    Returns ``mean_diff``, the percentile interval ``lo``/``hi`` and ``p_value_two_sided``: the
    share of resampled means at least as far from the observed mean as the observed mean is
    from zero (the resampling distribution shifted to the null), with the usual +1 correction.
    """
    x, y = _paired(a, b, n_boot, confidence)
    diff = x - y
    observed = float(diff.mean())
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot, dtype=np.float64)
    block = max(1, _MAX_CELLS_PER_BLOCK // diff.size)
    for start in range(0, n_boot, block):
        stop = min(n_boot, start + block)
        idx = rng.integers(0, diff.size, size=(stop - start, diff.size))
        means[start:stop] = diff[idx].mean(axis=1)
    tail = (1.0 - confidence) / 2.0 * 100.0
    lo, hi = np.percentile(means, [tail, 100.0 - tail])
    # A tiny slack so an all-identical resample (|0 - 0| >= 0) counts despite float noise.
    extreme = np.abs(means - observed) >= abs(observed) - 1e-12
    p_value = (1.0 + float(extreme.sum())) / (n_boot + 1.0)
    return {
        "mean_diff": observed,
        "lo": float(lo),
        "hi": float(hi),
        "p_value_two_sided": min(1.0, p_value),
    }


def paired_relative_change(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    n_boot: int = 10000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, float]:
    """mean(a) / mean(b) - 1 over paired questions, with a bootstrap percentile interval.

    The questions are resampled together, so the interval accounts for the pairing. "Memory lowers
    the answer NLL by 10%" is this value at -0.10.
    """
    x, y = _paired(a, b, n_boot, confidence)
    if y.mean() == 0:
        raise ValueError("the reference mean is zero: a relative change is undefined")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_boot, x.size))
    ratios = x[idx].mean(axis=1) / y[idx].mean(axis=1) - 1.0
    tail = (1.0 - confidence) / 2.0 * 100.0
    lo, hi = np.percentile(ratios, [tail, 100.0 - tail])
    return {"change": float(x.mean() / y.mean() - 1.0), "lo": float(lo), "hi": float(hi)}


def percentile(values: Sequence[float] | np.ndarray, q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation between order statistics."""
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile q must be within 0..100, got {q}")
    return float(np.percentile(_as_array(values, "values"), q))
