"""Statistics for benchmark reports: mean and t interval over seeds, paired bootstrap, exact McNemar.

numpy only (scipy is not a dependency); every random draw comes from a seeded ``numpy.random.Generator``.

>>> m, (lo, hi) = mean_ci([0.5, 0.6, 0.7])
>>> round(m, 3), round(lo, 3), round(hi, 3)
(0.6, 0.352, 0.848)
>>> mcnemar_exact([1, 1, 0, 0], [1, 0, 0, 0])["p_value"]
1.0
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def t_two_sided_prob(t: float, df: int) -> float:
    """P(|T| < t) for Student's t with integer ``df`` >= 1, from the closed-form finite series in
    theta = atan(t / sqrt(df)) (Abramowitz & Stegun 26.7.3-4)."""
    df = int(df)
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    t = abs(float(t))
    th = math.atan(t / math.sqrt(df))
    c2, s = math.cos(th) ** 2, math.sin(th)
    if df % 2 == 1:
        if df == 1:
            return 2 * th / math.pi
        term, total = 1.0, 1.0  # 1 + (2/3)c^2 + (2*4)/(3*5)c^4 + ... up to c^(df-3)
        for j in range(1, (df - 3) // 2 + 1):
            term *= (2 * j) / (2 * j + 1) * c2
            total += term
        return 2 / math.pi * (th + s * math.cos(th) * total)
    term, total = 1.0, 1.0  # 1 + (1/2)c^2 + (1*3)/(2*4)c^4 + ... up to c^(df-2)
    for j in range(1, (df - 2) // 2 + 1):
        term *= (2 * j - 1) / (2 * j) * c2
        total += term
    return s * total


def t_quantile(level: float, df: int) -> float:
    """The t such that P(|T| < t) = ``level`` (two-sided), e.g. 12.706 for level 0.95 and df 1."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    lo, hi = 0.0, 1.0
    while t_two_sided_prob(hi, df) < level:
        hi *= 2
    for _ in range(200):  # bisection: the probability is increasing in t
        mid = (lo + hi) / 2
        if t_two_sided_prob(mid, df) < level:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(hi, 1.0):
            break
    return (lo + hi) / 2


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, tuple[float, float] | None]:
    """Mean and its t interval (``mean ± t·s/sqrt(n)``) over seeds; the interval is None for fewer than 2."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("mean_ci of no values")
    m = float(x.mean())
    if x.size < 2:
        return m, None
    half = t_quantile(level, x.size - 1) * float(x.std(ddof=1)) / math.sqrt(x.size)
    return m, (m - half, m + half)


def paired_bootstrap(a, b, n_boot: int = 10_000, seed: int = 0, level: float = 0.95,
                     chunk: int = 2_000) -> dict:
    """Paired bootstrap of ``mean(a) - mean(b)`` over the same questions.

    ``a``, ``b``: per-question scores ``(n,)``, or ``(seeds, n)`` (averaged over seeds first, so a question's
    score is its mean over the seeds; the questions, not the seeds, are resampled). Returns ``diff`` (observed),
    ``ci95`` (percentile interval at ``level``), ``p_value`` (two-sided, from the bootstrap distribution
    shifted to the null of no difference: ``(1 + #{|d* - d| >= |d|}) / (1 + n_boot)``), ``n`` and ``n_boot``.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired scores need the same shape, got {a.shape} and {b.shape}")
    if a.ndim == 2:
        a, b = a.mean(0), b.mean(0)
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"expected (n,) or (seeds, n) scores, got shape {a.shape}")
    d = a - b  # (n,)
    n, obs = d.size, float(d.mean())
    rng = np.random.default_rng(seed)
    boots = np.empty(n_boot)
    for s in range(0, n_boot, chunk):  # (chunk, n) index draws at a time: bounded memory
        m = min(chunk, n_boot - s)
        boots[s:s + m] = d[rng.integers(0, n, size=(m, n))].mean(1)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(boots, [alpha, 1 - alpha])
    tol = 1e-12 * max(1.0, abs(obs))
    extreme = int(np.count_nonzero(np.abs(boots - obs) >= abs(obs) - tol)) if abs(obs) > tol else n_boot
    return {"diff": obs, "ci95": [float(lo), float(hi)], "p_value": (1 + extreme) / (1 + n_boot), "n": n,
            "n_boot": n_boot}


def mcnemar_exact(a_correct, b_correct) -> dict:
    """Exact (binomial) McNemar test on paired 0/1 outcomes.

    ``n01`` = questions a got right and b wrong, ``n10`` = b right and a wrong; under the null each discordant
    question is a fair coin, so ``p = min(1, 2·P(X <= min(n01, n10)))`` with ``X ~ Binomial(n01 + n10, 1/2)``.
    """
    a, b = np.asarray(a_correct).astype(bool).ravel(), np.asarray(b_correct).astype(bool).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired outcomes need the same length, got {a.size} and {b.size}")
    n01, n10 = int(np.count_nonzero(a & ~b)), int(np.count_nonzero(~a & b))
    n = n01 + n10
    if n == 0:
        return {"n01": 0, "n10": 0, "p_value": 1.0}
    k = min(n01, n10)
    tail = sum(math.comb(n, i) for i in range(k + 1))  # exact integers
    return {"n01": n01, "n10": n10, "p_value": min(1.0, 2 * tail / 2 ** n)}
