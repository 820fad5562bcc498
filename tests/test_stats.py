"""The statistics module against known values (agora_cli/stats.py)."""

from __future__ import annotations

import math

import pytest

from agora_cli.stats import (
    interval_text,
    mcnemar_exact,
    paired_binary,
    paired_bootstrap,
    rate_text,
    significance_text,
    wilson,
    wilson_lower,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("k", "n", "lo", "hi"),
    [
        (1, 16, 0.0111, 0.2833),  # 6.2% [1.1, 28.3] on 16 items, the example in docs/evidence.md
        (0, 16, 0.0, 0.1936),
        (16, 16, 0.8064, 1.0),
        (8, 16, 0.2800, 0.7200),
        (50, 100, 0.4038, 0.5962),
        (81, 263, 0.2553, 0.3662),  # Newcombe (1998), Table I
    ],
)
def test_wilson_95_known_values(k, n, lo, hi):
    got = wilson(k, n)
    assert got == pytest.approx((lo, hi), abs=5e-4)


def test_wilson_edge_cases():
    assert wilson(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson(3, 2)
    # More evidence at the same rate gives a higher lower bound: the elite score's point.
    assert wilson_lower(1, 1) < wilson_lower(3, 3) < wilson_lower(10, 10)
    assert wilson_lower(2, 2) > wilson_lower(2, 3)


@pytest.mark.parametrize(
    ("b", "c", "p"),
    [
        (0, 6, 0.03125),  # 2 * (1/2)^6
        (6, 0, 0.03125),
        (0, 5, 0.0625),
        (1, 6, 0.125),  # 2 * (1 + 7) / 128
        (3, 3, 1.0),
        (0, 0, 1.0),
        (2, 10, 0.0385742),  # 2 * (1 + 12 + 66) / 4096
    ],
)
def test_mcnemar_exact_known_values(b, c, p):
    assert mcnemar_exact(b, c) == pytest.approx(p, abs=1e-6)


def test_paired_binary_counts_only_shared_items():
    a = {"1": True, "2": True, "3": False, "4": False, "x": True}
    b = {"1": True, "2": False, "3": True, "4": True, "y": False}
    r = paired_binary(a, b)
    assert (r.n, r.k_a, r.k_b, r.only_a, r.only_b) == (4, 2, 3, 1, 2)
    assert r.p == pytest.approx(mcnemar_exact(1, 2)) and not r.significant


def test_paired_bootstrap():
    same = paired_bootstrap([0.1, 0.2, 0.3], [0.1, 0.2, 0.3])
    assert (same.diff, same.p) == (0.0, 1.0)
    shift = paired_bootstrap([0.0] * 10, [1.0] * 10)
    # every resample is the same: the exact sign test's p, not the bootstrap's 0
    assert shift.diff == 1.0 and shift.p == pytest.approx(2 * 0.5**10) and shift.significant
    assert paired_bootstrap([0.0] * 3, [1.0] * 3).p == 0.25  # 3 of 3 better is not evidence
    one = paired_bootstrap([0.0], [0.042])  # one pair: a difference, no interval, no evidence
    assert one.diff == 0.042 and one.p == 1.0 and not one.significant
    assert interval_text(one.lo, one.hi) == "[–]"
    xs = [0, 1, 0, 1, 0, 1, 0, 1, 0, 1] * 3
    ys = [1, 1, 1, 1, 1, 1, 0, 1, 1, 1] * 3  # +12 of 30 improved, none worse
    r = paired_bootstrap(xs, ys, seed=1)
    assert r.diff == pytest.approx(0.4)
    assert r.lo < 0.4 < r.hi and r.lo > 0 and r.p < 0.05
    noise = paired_bootstrap([0, 1] * 10, [1, 0] * 10)
    assert noise.diff == 0.0 and noise.p > 0.5 and not noise.significant
    assert paired_bootstrap(xs, ys, seed=1) == r  # seeded: reproducible
    with pytest.raises(ValueError):
        paired_bootstrap([1.0], [1.0, 2.0])


def test_texts():
    assert rate_text(1, 16) == "6.2% [1.1, 28.3] (1/16)"
    assert rate_text(0, 0) == "– (n=0)"
    assert significance_text(0.03125) == "significant at 0.05 (p=0.031)"
    assert significance_text(0.2) == "not significant at 0.05 (p=0.200)"


def test_clopper_pearson_and_the_rate_ratio_of_two_counts():
    """Known exact intervals (16/20: [0.563, 0.943]; 0/10: [0, 0.308]), and the rate ratio of
    validated samples over step time: equal rates give 1 with p = 1; swapping the runs inverts
    the ratio and its interval; 16 samples in 432 s against 4 in 746 s is 6.9x [2.2, 28.4]."""
    from agora_cli.stats import clopper_pearson, count_ratio

    assert clopper_pearson(16, 20) == pytest.approx((0.5634, 0.9427), abs=1e-4)
    assert clopper_pearson(0, 10) == pytest.approx((0.0, 0.3085), abs=1e-4)
    even = count_ratio(5, 100.0, 5, 100.0)
    assert even.ratio == 1.0 and even.p == 1.0 and even.lo < 1 < even.hi
    a, b = count_ratio(16, 432.0, 4, 746.0), count_ratio(4, 746.0, 16, 432.0)
    assert (a.ratio, a.lo, a.hi) == pytest.approx((1 / b.ratio, 1 / b.hi, 1 / b.lo))
    assert (a.ratio, a.lo, a.hi) == pytest.approx((6.907, 2.228, 28.392), abs=1e-3)
    assert a.p == pytest.approx(b.p) and a.p < 1e-3
    assert a.text().startswith("6.91x [2.23, 28.39], p")
    with pytest.raises(ValueError):
        count_ratio(0, 1.0, 0, 1.0)


def _log_pmf(i: int, n: int, p: float) -> float:
    return (
        math.lgamma(n + 1)
        - math.lgamma(i + 1)
        - math.lgamma(n - i + 1)
        + i * math.log(p)
        + (n - i) * math.log1p(-p)
    )


def _tail(k: int, n: int, p: float, upper: bool) -> float:
    """P(X >= k) (upper) or P(X <= k) by summing the pmf in log space over 40 sd: another way
    to the same number than the incomplete beta the module uses."""
    sd = math.sqrt(n * p * (1 - p))
    span = (
        range(k, min(n, int(k + 40 * sd + 50)) + 1) if upper else range(max(0, int(k - 40 * sd - 50)), k + 1)
    )
    return math.fsum(math.exp(_log_pmf(i, n, p)) for i in span)


@pytest.mark.parametrize(("k", "n"), [(600, 1100), (10**5, 10**6), (3, 10**6), (999_999, 10**6), (1, 16)])
def test_clopper_pearson_at_large_counts(k, n):
    """Exact at any count: the bounds put alpha/2 in each tail (checked by summing the pmf), and
    at large n they sit next to the Wilson interval."""
    from agora_cli.stats import clopper_pearson

    lo, hi = clopper_pearson(k, n)
    assert _tail(k, n, lo, upper=True) == pytest.approx(0.025, rel=1e-6)
    assert _tail(k, n, hi, upper=False) == pytest.approx(0.025, rel=1e-6)
    if n >= 1000:
        assert (lo, hi) == pytest.approx(wilson(k, n), rel=2e-3, abs=1e-6)


def test_count_ratio_and_mcnemar_at_large_counts():
    """600 of 1100 events against equal exposure: the exact two-sided binomial p, the same sum
    in exact rationals (mpmath, 30 digits); 10^5 against 9 * 10^5 events: no overflow."""
    import mpmath

    from agora_cli.stats import binom_two_sided, count_ratio

    r = count_ratio(600, 1.0, 500, 1.0)
    mpmath.mp.dps = 30
    pmf = [mpmath.binomial(1100, i) / mpmath.mpf(2) ** 1100 for i in range(1101)]
    brute = float(sum(x for x in pmf if x <= pmf[600] * (1 + mpmath.mpf("1e-9"))))
    assert r.p == pytest.approx(brute, rel=1e-9) and r.ratio == pytest.approx(1.2)
    assert r.lo < 1.2 < r.hi and r.lo > 1  # 1.2x on 1100 events is beyond chance
    big = count_ratio(10**5, 1.0, 9 * 10**5, 9.5)
    assert big.lo < big.ratio < big.hi and big.p < 1e-20
    assert mcnemar_exact(500, 600) == pytest.approx(brute, rel=1e-9)
    for k, n, p in [(16, 20, 0.367), (4, 20, 0.367), (10, 30, 0.3), (9, 30, 0.3), (0, 5, 0.5)]:
        q = mpmath.mpf(p)
        pm = [mpmath.binomial(n, i) * q**i * (1 - q) ** (n - i) for i in range(n + 1)]
        want = min(1.0, float(sum(x for x in pm if x <= pm[k] * (1 + mpmath.mpf("1e-9")))))
        assert binom_two_sided(k, n, p) == pytest.approx(want, rel=1e-9)
