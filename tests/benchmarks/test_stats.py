"""benchmarks/_stats.py against independently known values: textbook t quantiles, hand-computed McNemar
examples, scipy.stats where installed, and bootstrap cases whose answer is known in closed form."""
import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks._stats import mcnemar_exact, mean_ci, paired_bootstrap, t_quantile  # noqa: E402


@pytest.mark.parametrize("df,expected", [(1, 12.706), (2, 4.303), (4, 2.776), (10, 2.228), (30, 2.042)])
def test_t_quantile_matches_the_printed_table(df, expected):
    # two-sided 95% critical values from any statistics textbook's t table (3 decimals)
    assert t_quantile(0.95, df) == pytest.approx(expected, abs=5e-4)


def test_t_quantile_tends_to_the_normal_quantile():
    assert t_quantile(0.95, 100_000) == pytest.approx(1.959964, abs=1e-4)


def test_t_quantile_against_scipy():
    stats = pytest.importorskip("scipy.stats", reason="scipy is an optional oracle")
    for df in list(range(1, 41)) + [57, 120]:
        for level in (0.8, 0.95, 0.99):
            assert t_quantile(level, df) == pytest.approx(stats.t.ppf(0.5 + level / 2, df), rel=1e-7)


def test_mean_ci_by_hand():
    # values 1, 2, 3: mean 2, s = 1, half-width = t(0.975, 2) * 1 / sqrt(3) = 4.3027 / 1.7321 = 2.4841
    m, (lo, hi) = mean_ci([1.0, 2.0, 3.0])
    assert m == 2.0
    assert lo == pytest.approx(2 - 2.4841, abs=1e-3) and hi == pytest.approx(2 + 2.4841, abs=1e-3)
    assert mean_ci([0.7]) == (0.7, None)
    m, ci = mean_ci([0.5, 0.5, 0.5])
    assert ci == (0.5, 0.5)


def test_mean_ci_against_scipy():
    stats = pytest.importorskip("scipy.stats", reason="scipy is an optional oracle")
    x = np.random.default_rng(3).normal(size=7)
    lo, hi = stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
    _, ci = mean_ci(x)
    assert ci == pytest.approx((lo, hi), rel=1e-7)


def test_mean_ci_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    hits = sum(lo <= 0 <= hi for lo, hi in (mean_ci(rng.normal(size=3))[1] for _ in range(4000)))
    assert 0.935 < hits / 4000 < 0.965  # binomial sd at 4000 draws: 0.0034


def test_mcnemar_by_hand():
    # 1 vs 9 discordant pairs: P(X <= 1 | n=10, 1/2) = (1 + 10) / 1024, two-sided 22/1024
    a = [1] * 1 + [0] * 9 + [1] * 5 + [0] * 3  # 5 both right, 3 both wrong (ignored by the test)
    b = [0] * 1 + [1] * 9 + [1] * 5 + [0] * 3
    r = mcnemar_exact(a, b)
    assert (r["n01"], r["n10"]) == (1, 9)
    assert r["p_value"] == pytest.approx(22 / 1024, abs=1e-15)
    # 2 vs 8: (1 + 10 + 45) / 1024 * 2 = 0.109375; symmetric in the two arms
    r = mcnemar_exact([1, 1] + [0] * 8, [0, 0] + [1] * 8)
    assert r["p_value"] == pytest.approx(0.109375, abs=1e-15)
    assert mcnemar_exact([0, 0] + [1] * 8, [1, 1] + [0] * 8)["p_value"] == r["p_value"]
    # balanced and no discordance: p = 1
    assert mcnemar_exact([1, 0, 1, 0], [0, 1, 1, 0])["p_value"] == 1.0
    assert mcnemar_exact([1, 0], [1, 0])["p_value"] == 1.0


def test_mcnemar_against_scipy_binomtest():
    stats = pytest.importorskip("scipy.stats", reason="scipy is an optional oracle")
    rng = np.random.default_rng(1)
    for _ in range(20):
        a, b = rng.random(60) < 0.6, rng.random(60) < 0.45
        r = mcnemar_exact(a, b)
        ref = stats.binomtest(min(r["n01"], r["n10"]), r["n01"] + r["n10"], 0.5).pvalue
        assert r["p_value"] == pytest.approx(ref, rel=1e-9)


def test_paired_bootstrap_constant_difference():
    # every question differs by exactly +1: every resample has mean 1, the null is never reached
    r = paired_bootstrap(np.ones(50), np.zeros(50), n_boot=999, seed=0)
    assert r["diff"] == 1.0 and r["ci95"] == [1.0, 1.0]
    assert r["p_value"] == pytest.approx(1 / 1000)


def test_paired_bootstrap_no_difference():
    a = np.random.default_rng(2).integers(0, 2, size=40)
    r = paired_bootstrap(a, a.copy(), n_boot=500)
    assert r["diff"] == 0.0 and r["ci95"] == [0.0, 0.0] and r["p_value"] == 1.0


def _with_moments(n, mean, sd, seed):
    """n continuous values with exactly this mean and population sd."""
    z = np.random.default_rng(seed).normal(size=n)
    return mean + sd * (z - z.mean()) / z.std()


def test_paired_bootstrap_matches_the_normal_approximation():
    # n = 2000 per-question differences with mean mu and population sd 1: by the CLT the bootstrap mean is
    # about N(mu, 1 / sqrt(n)), so the 95% interval is mu +- 1.96 / sqrt(n) and the two-sided p is
    # 2 * (1 - Phi(mu * sqrt(n))) = erfc(mu * sqrt(n / 2))
    n = 2000
    se = 1 / math.sqrt(n)
    for mu, seed in ((0.1, 5), (0.02, 6), (0.045, 7)):
        d = _with_moments(n, mu, 1.0, seed)
        r = paired_bootstrap(d, np.zeros(n), n_boot=20_000, seed=seed)
        assert r["diff"] == pytest.approx(mu)
        assert r["ci95"][0] == pytest.approx(mu - 1.96 * se, abs=0.1 * se)
        assert r["ci95"][1] == pytest.approx(mu + 1.96 * se, abs=0.1 * se)
        p_normal = math.erfc(mu / se / math.sqrt(2))  # 7.6e-6, 0.371, 0.044
        if p_normal < 1e-4:
            assert r["p_value"] <= 5 / 20_001  # beyond the resolution of 20k draws: near the floor 1/(B+1)
        else:
            assert r["p_value"] == pytest.approx(p_normal, abs=0.02)


def test_paired_bootstrap_against_scipy():
    stats = pytest.importorskip("scipy.stats", reason="scipy is an optional oracle")
    rng = np.random.default_rng(4)
    a, b = (rng.random(300) < 0.62).astype(float), (rng.random(300) < 0.55).astype(float)
    ref = stats.bootstrap((a - b,), np.mean, n_resamples=20_000, method="percentile", confidence_level=0.95,
                          random_state=0).confidence_interval
    r = paired_bootstrap(a, b, n_boot=20_000, seed=1)
    assert r["ci95"] == pytest.approx([ref.low, ref.high], abs=0.004)


def test_paired_bootstrap_averages_seeds_and_is_seeded():
    a = np.array([[1, 0, 1, 1], [1, 1, 0, 1]])  # per-question mean over 2 seeds: 1, .5, .5, 1
    b = np.array([[0, 0, 1, 1], [0, 0, 1, 0]])  # 0, 0, 1, .5
    r = paired_bootstrap(a, b, n_boot=300, seed=7)
    assert r["diff"] == pytest.approx((1 + .5 - .5 + .5) / 4)
    assert r == paired_bootstrap(a, b, n_boot=300, seed=7)
    with pytest.raises(ValueError, match="same shape"):
        paired_bootstrap(a, b[:, :3])
