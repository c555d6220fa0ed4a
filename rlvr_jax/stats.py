"""Estimators for held-out figures: pass@k (unbiased) and bootstrap confidence intervals over
questions, for one figure and for a paired before/after difference."""

from __future__ import annotations

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021, "Evaluating Large
    Language Models Trained on Code", eq. 1): 1 - C(n-c, k) / C(n, k), as a stable product."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k: need 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def ks_for(n: int) -> list[int]:
    """The k reported for n samples: 1, the powers of two below n, and n."""
    return sorted({1, n, *[2**i for i in range(1, n.bit_length()) if 2**i < n]})


def bootstrap_ci(
    values: np.ndarray, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> dict[str, float]:
    """Mean of per-question values [Q] and its percentile bootstrap CI over questions.

    Returns {"mean", "lo", "hi", "n"}; lo = hi = mean when there is a single question.
    """
    v = np.asarray(values, np.float64)
    if v.ndim != 1 or not len(v):
        raise ValueError(f"bootstrap_ci: need a non-empty [Q] vector, got shape {v.shape}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(v), size=(n_boot, len(v)))
    means = v[idx].mean(axis=1)
    a = (1.0 - level) / 2
    lo, hi = np.quantile(means, [a, 1.0 - a])
    return {"mean": float(v.mean()), "lo": float(lo), "hi": float(hi), "n": len(v)}


def paired_ci(
    before: np.ndarray, after: np.ndarray, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> dict[str, dict[str, float]]:
    """Before, after and after - before over the same questions [Q], each with its bootstrap CI;
    the difference resamples questions jointly, so question difficulty cancels out."""
    b, a = np.asarray(before, np.float64), np.asarray(after, np.float64)
    if b.shape != a.shape:
        raise ValueError(f"paired_ci: before {b.shape} and after {a.shape} differ")
    return {
        "before": bootstrap_ci(b, n_boot, seed, level),
        "after": bootstrap_ci(a, n_boot, seed, level),
        "change": bootstrap_ci(a - b, n_boot, seed, level),
    }
