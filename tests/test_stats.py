"""Tests for flashmem.evaluation.stats against hand-computed and textbook values."""

import math

import numpy as np
import pytest

from flashmem.evaluation.stats import mean_ci, paired_bootstrap, paired_relative_change, percentile, proportion_ci


def test_wilson_five_of_ten():
    p, lo, hi = proportion_ci(5, 10)
    assert p == 0.5
    assert lo == pytest.approx(0.2366, abs=1e-4)
    assert hi == pytest.approx(0.7634, abs=1e-4)


def test_wilson_edges_stay_in_unit_interval():
    p, lo, hi = proportion_ci(0, 20)
    assert p == 0.0 and lo == 0.0 and hi == pytest.approx(0.1611, abs=1e-4)
    p, lo, hi = proportion_ci(20, 20)
    assert p == 1.0 and hi == 1.0 and lo == pytest.approx(0.8389, abs=1e-4)
    with pytest.raises(ValueError):
        proportion_ci(3, 0)
    with pytest.raises(ValueError):
        proportion_ci(5, 4)


def test_mean_ci_known_values():
    values = [1.0, 2.0, 3.0, 4.0, 5.0]
    mean, lo, hi = mean_ci(values)
    half = 1.959964 * math.sqrt(2.5) / math.sqrt(5)
    assert mean == 3.0
    assert lo == pytest.approx(3.0 - half, abs=1e-5) and hi == pytest.approx(3.0 + half, abs=1e-5)
    mean, lo99, hi99 = mean_ci(values, confidence=0.99)
    assert lo99 < lo and hi99 > hi
    assert mean_ci([7.0, 7.0, 7.0]) == (7.0, 7.0, 7.0)
    single = mean_ci([4.0])
    assert single[0] == 4.0 and math.isnan(single[1]) and math.isnan(single[2])
    with pytest.raises(ValueError):
        mean_ci([])
    with pytest.raises(ValueError):
        mean_ci([1.0, 2.0], confidence=1.5)


def test_bootstrap_identical_arrays():
    a = np.array([1, 0, 1, 1, 0, 1, 0, 0], dtype=float)
    result = paired_bootstrap(a, a.copy(), n_boot=2000)
    assert result["mean_diff"] == 0.0
    assert (result["lo"], result["hi"]) == (0.0, 0.0)
    assert result["p_value_two_sided"] == 1.0


def test_bootstrap_clear_shift_excludes_zero():
    rng = np.random.default_rng(5)
    b = rng.integers(0, 2, size=300).astype(float)
    a = np.where(rng.random(300) < 0.3, 1.0, b)  # a fixes 30% of questions
    result = paired_bootstrap(a, b, n_boot=2000, seed=1)
    assert result["mean_diff"] == pytest.approx(float((a - b).mean()))
    assert 0.0 < result["lo"] < result["mean_diff"] < result["hi"]
    assert result["p_value_two_sided"] < 0.01
    flipped = paired_bootstrap(b, a, n_boot=2000, seed=1)
    assert flipped["hi"] < 0.0


def test_bootstrap_is_seeded_and_checks_input():
    a, b = [1.0, 0.0, 1.0, 0.0, 1.0], [0.0, 0.0, 1.0, 1.0, 0.0]
    assert paired_bootstrap(a, b, n_boot=500, seed=3) == paired_bootstrap(a, b, n_boot=500, seed=3)
    with pytest.raises(ValueError, match="length"):
        paired_bootstrap([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="n_boot"):
        paired_bootstrap([1.0], [1.0], n_boot=0)


def test_percentile():
    assert percentile([1, 2, 3, 4, 5], 50) == 3.0
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([10, 20], 0) == 10.0 and percentile([10, 20], 100) == 20.0
    with pytest.raises(ValueError):
        percentile([1, 2], 101)
    with pytest.raises(ValueError):
        percentile([], 50)


def test_relative_change_of_paired_means():
    a = np.array([1.0, 2.0, 3.0, 4.0])
    exact = paired_relative_change(0.9 * a, a, n_boot=500)  # every question 10% lower: no spread
    assert exact["change"] == pytest.approx(-0.1) and exact["lo"] == pytest.approx(-0.1)
    assert exact["hi"] == pytest.approx(-0.1)
    rng = np.random.default_rng(1)
    noisy = a * (1.0 + rng.normal(0.0, 0.05, a.size)) + 0.5
    r = paired_relative_change(noisy, a, n_boot=2000)
    assert r["change"] == pytest.approx(noisy.mean() / a.mean() - 1.0)
    assert r["lo"] < r["change"] < r["hi"]
    with pytest.raises(ValueError, match="differ in length"):
        paired_relative_change(a, a[:3])
