"""Uncertainty for every accuracy agora prints or plots: the single home of its statistics.

Pure functions, no I/O:

- `wilson(k, n)`: the 95% Wilson score interval of a single rate k/n (Wilson 1927). Unlike the
  normal approximation it stays inside [0, 1] and is sensible at k = 0 or k = n, which is where
  small benchmark subsets live (1/16 -> [1.1%, 28.3%]).
- `mcnemar_exact(b, c)`: the exact two-sided McNemar test for paired binary outcomes on the same
  items: b items right only under A, c right only under B; under H0 the b + c discordant items
  split Binomial(b + c, 1/2).
- `paired_bootstrap(xs, ys)`: the difference of means of paired values with a percentile 95%
  interval and a two-sided bootstrap p-value. Only for values that are independent replicates:
  the items of one run are not (two runs differ by more than their items' noise), so comparisons
  of runs use `seed_test`.
- `seed_test(a, b)`: runs compared with the seed as the unit of replication: the per-seed
  differences b - a and the exact two-sided sign-flip (permutation) test of their mean. Under
  equal variants each difference is as likely positive as negative, whatever the run-to-run
  variance, so the test holds its level; with n seeds its smallest p is 2 / 2^n, so below 6 seeds
  it cannot reach 0.05 and no p is reported.
- `count_ratio(k1, t1, k0, t0)`: the ratio of two event rates (k1 events in exposure t1 against
  k0 in t0, e.g. validated samples per hour of two runs) with an exact 95% interval and
  two-sided p-value: given k1 + k0 events, k1 is Binomial(k1 + k0, t1 / (t1 + t0)) when the rates
  are equal; the Clopper-Pearson interval of that share maps to the ratio.

Binomial tails are regularised incomplete beta functions computed in log space (`math.lgamma`,
a continued fraction), so exact intervals and p-values hold at any count (10^5 of 10^6 as well
as 3 of 16) without factorials that overflow a float.
- `rate_text`, `interval_text`, `significance_text`: how the tables write them.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

Z95 = 1.959963984540054  # the 0.975 quantile of the standard normal
ALPHA = 0.05


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of k successes in n trials; (0, 1) when n is 0."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= k <= n:
        raise ValueError(f"wilson: need 0 <= k <= n (got k={k}, n={n})")
    p = k / n
    z2 = z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    # At k = 0 (k = n) the bound is exactly 0 (1); clamp rounding noise.
    lo = 0.0 if k == 0 else max(0.0, centre - half)
    hi = 1.0 if k == n else min(1.0, centre + half)
    return lo, hi


def wilson_lower(k: int, n: int, z: float = Z95) -> float:
    """The lower 95% Wilson bound: a rate that rewards more evidence (3/3 beats 1/1)."""
    return wilson(k, n, z)[0]


def successes(rate: float, n: int) -> int:
    """k from a stored rate and its n (rates are stored as k/n)."""
    return int(round(rate * n))


def mcnemar_exact(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value for b and c discordant pairs (1.0 when there are none)."""
    if b < 0 or c < 0:
        raise ValueError(f"mcnemar_exact: counts must be >= 0 (got b={b}, c={c})")
    n = b + c
    if n == 0:
        return 1.0
    if n <= 1000:  # exact integers, correctly rounded once (2 * 0.5^6 is exactly 0.03125)
        return min(1.0, 2 * sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2**n)
    return min(1.0, 2 * _binom_cdf(min(b, c), n, 0.5))  # past that: the incomplete beta


# --------------------------------------------------------------------------- binomial tails


def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz; Numerical
    Recipes 6.4). Converges in O(sqrt(max(a, b))) terms for x < (a + 1) / (a + b + 2)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 100_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            return h
    raise ArithmeticError(f"incomplete beta did not converge (a={a}, b={b}, x={x})")


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if not (a > 0 and b > 0) or not 0.0 <= x <= 1.0:
        raise ValueError(f"betainc: need a, b > 0 and 0 <= x <= 1 (got a={a}, b={b}, x={x})")
    if x == 0.0 or x == 1.0:
        return x
    # log of x^a (1-x)^b / B(a, b): in log space, so large a and b neither overflow nor vanish
    # before they are combined.
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def _binom_logpmf(i: int, n: int, p: float) -> float:
    """log P(X = i) for X ~ Binomial(n, p), 0 < p < 1."""
    return (
        math.lgamma(n + 1)
        - math.lgamma(i + 1)
        - math.lgamma(n - i + 1)
        + i * math.log(p)
        + (n - i) * math.log1p(-p)
    )


def _binom_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p) = I_{1-p}(n - k, k + 1)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    return betainc(n - k, k + 1, 1.0 - p)


def _binom_sf(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p) = I_p(k, n - k + 1)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    return betainc(k, n - k + 1, p)


def binom_two_sided(k: int, n: int, p: float) -> float:
    """Exact two-sided binomial p: P(outcomes no more likely than k) under Binomial(n, p).

    The pmf rises to its mode and falls after it, so the outcomes at most as likely as k are two
    tails: k's own, and the other side's from the first outcome no more likely than k (found by
    bisection on the log pmf), each one incomplete beta: no sum over all n + 1 outcomes.
    """
    if not 0 <= k <= n:
        raise ValueError(f"binom_two_sided: need 0 <= k <= n (got k={k}, n={n})")
    if p <= 0.0 or p >= 1.0:
        return 1.0 if k == round(n * p) else 0.0
    mode = min(n, int((n + 1) * p))
    bar = _binom_logpmf(k, n, p) + 1e-9  # a relative tolerance, for ties between the two sides
    if k <= mode:
        lo, hi = max(mode, k + 1), n + 1  # first j in [lo, n] with pmf(j) <= pmf(k); n + 1: none
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if _binom_logpmf(mid, n, p) <= bar else (mid + 1, hi)
        other = _binom_sf(lo, n, p) if lo <= n else 0.0
        return min(1.0, _binom_cdf(k, n, p) + other)
    lo, hi = -1, min(mode, k - 1)  # last j in [0, hi] with pmf(j) <= pmf(k); -1: none
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if _binom_logpmf(mid, n, p) <= bar else (lo, mid - 1)
    return min(1.0, _binom_cdf(lo, n, p) + _binom_sf(k, n, p))


def _beta_quantile(q: float, a: float, b: float) -> float:
    """x with I_x(a, b) = q, by bisection (I is increasing in x)."""
    lo, hi = 0.0, 1.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if betainc(a, b, mid) < q else (lo, mid)
        if hi - lo < 1e-15:
            break
    return (lo + hi) / 2


def clopper_pearson(k: int, n: int, alpha: float = ALPHA) -> tuple[float, float]:
    """The exact (Clopper-Pearson) 1 - alpha interval of a binomial share k/n: the alpha/2 and
    1 - alpha/2 quantiles of Beta(k, n - k + 1) and Beta(k + 1, n - k)."""
    if not 0 <= k <= n or n <= 0:
        raise ValueError(f"clopper_pearson: need 0 <= k <= n, n > 0 (got k={k}, n={n})")
    lower = 0.0 if k == 0 else _beta_quantile(alpha / 2, k, n - k + 1)
    upper = 1.0 if k == n else _beta_quantile(1 - alpha / 2, k + 1, n - k)
    return lower, upper


@dataclass(frozen=True)
class RateRatio:
    """(k1 / t1) / (k0 / t0) with its exact 95% interval and the two-sided p of equal rates."""

    ratio: float
    lo: float
    hi: float
    p: float

    def text(self) -> str:
        return f"{self.ratio:.2f}x [{self.lo:.2f}, {self.hi:.2f}], {p_text(self.p)}"


def count_ratio(k1: int, t1: float, k0: int, t0: float) -> RateRatio:
    """The rate ratio of k1 events in exposure t1 against k0 in t0 (see the module doc)."""
    if k1 < 0 or k0 < 0 or t1 <= 0 or t0 <= 0 or k1 + k0 == 0:
        raise ValueError(
            f"count_ratio: need counts >= 0 (not both 0) and exposures > 0 (got {k1}/{t1}, {k0}/{t0})"
        )
    n, share = k1 + k0, t1 / (t1 + t0)
    lo, hi = clopper_pearson(k1, n)
    scale = t0 / t1

    def odds(q: float) -> float:
        return math.inf if q >= 1 else q / (1 - q) * scale

    # Two-sided exact p: the outcomes no more likely than the one seen, under equal rates.
    p = binom_two_sided(k1, n, share)
    ratio = math.inf if k0 == 0 else k1 / t1 / (k0 / t0)
    return RateRatio(ratio, odds(lo), odds(hi), p)


@dataclass(frozen=True)
class PairedBinary:
    """Two conditions scored on the same items: accuracies, discordant counts, McNemar p."""

    n: int  # items both conditions answered
    k_a: int
    k_b: int
    only_a: int  # b: right under A, wrong under B
    only_b: int  # c: right under B, wrong under A
    p: float

    @property
    def significant(self) -> bool:
        return self.p < ALPHA


def paired_binary(a: Mapping[str, bool], b: Mapping[str, bool]) -> PairedBinary:
    """McNemar on the items present in both `a` and `b` ({item id: correct})."""
    shared = sorted(set(a) & set(b))
    only_a = sum(1 for i in shared if a[i] and not b[i])
    only_b = sum(1 for i in shared if b[i] and not a[i])
    return PairedBinary(
        n=len(shared),
        k_a=sum(1 for i in shared if a[i]),
        k_b=sum(1 for i in shared if b[i]),
        only_a=only_a,
        only_b=only_b,
        p=mcnemar_exact(only_a, only_b),
    )


@dataclass(frozen=True)
class PairedMeans:
    """mean(ys - xs) over paired values with a bootstrap 95% interval and p-value."""

    n: int
    diff: float
    lo: float
    hi: float
    p: float

    @property
    def significant(self) -> bool:
        return self.p < ALPHA


def paired_bootstrap(
    xs: Sequence[float], ys: Sequence[float], *, resamples: int = 10_000, seed: int = 0
) -> PairedMeans:
    """Paired bootstrap of mean(ys - xs): resample the pairs with replacement `resamples` times.

    The interval is the 2.5/97.5 percentiles of the resampled mean differences; the two-sided p is
    twice the smaller share of resampled differences at or beyond zero on either side (capped at
    1). Seeded, so a report is reproducible.

    Where resampling cannot vary, it says nothing: one pair has no interval (NaN, printed `[–]`)
    and p 1; n > 1 pairs that all differ by the same d keep the zero-width interval [d, d] but take
    the exact sign test's p = 2 * 0.5^n (all-equal zero differences: p 1), not the bootstrap's 0.
    """
    if len(xs) != len(ys):
        raise ValueError(f"paired_bootstrap: {len(xs)} values against {len(ys)}")
    d = [y - x for x, y in zip(xs, ys, strict=True)]
    n = len(d)
    if n == 0:
        return PairedMeans(0, math.nan, math.nan, math.nan, 1.0)
    diff = sum(d) / n
    if n == 1:
        return PairedMeans(1, diff, math.nan, math.nan, 1.0)
    if all(v == d[0] for v in d):
        p = 1.0 if d[0] == 0 else min(1.0, 2 * 0.5**n)
        return PairedMeans(n, diff, diff, diff, p)
    rng = random.Random(seed)
    means = sorted(math.fsum(rng.choices(d, k=n)) / n for _ in range(resamples))
    lo = means[int(0.025 * (resamples - 1))]
    hi = means[int(math.ceil(0.975 * (resamples - 1)))]
    le = sum(1 for m in means if m <= 0) / resamples
    ge = sum(1 for m in means if m >= 0) / resamples
    return PairedMeans(n, diff, lo, hi, min(1.0, 2 * min(le, ge)))


# --------------------------------------------------------------------------- runs: the seed is the unit

EXACT_SEEDS = 16  # up to 2^16 sign patterns enumerated; more seeds: that many random patterns


def min_signflip_p(n: int) -> float:
    """The smallest two-sided p the exact sign-flip test can give with n nonzero differences:
    the pattern seen and its mirror are as extreme as it gets, so 2 / 2^n (n = 5: 0.0625)."""
    return 1.0 if n <= 0 else min(1.0, 2.0 / 2**n)


def seeds_needed(alpha: float = ALPHA) -> int:
    """The fewest seeds with which the exact sign-flip test can reach p < alpha (0.05: 6)."""
    n = 1
    while min_signflip_p(n) >= alpha:
        n += 1
    return n


def signflip_p(diffs: Sequence[float], *, seed: int = 0) -> float:
    """Exact two-sided sign-flip (permutation) p of mean(diffs) = 0.

    Under H0 each difference is symmetric about 0, so all 2^n sign patterns of |d| are equally
    likely; p is the share of them whose |sum| is at least the one seen. Exact up to
    `EXACT_SEEDS` differences; past that, 2^16 seeded random patterns ((hits + 1) / (R + 1)).
    """
    absd = [abs(d) for d in diffs]
    n = len(absd)
    if n == 0:
        return 1.0
    seen = abs(sum(diffs))
    tol = 1e-12 * max(1.0, sum(absd))
    if n <= EXACT_SEEDS:
        sums = [0.0]
        for a in absd:
            sums = [x + a for x in sums] + [x - a for x in sums]
        return sum(1 for x in sums if abs(x) >= seen - tol) / len(sums)
    rng, draws = random.Random(seed), 2**EXACT_SEEDS
    hits = sum(
        1 for _ in range(draws) if abs(sum(a if rng.random() < 0.5 else -a for a in absd)) >= seen - tol
    )
    return (hits + 1) / (draws + 1)


@dataclass(frozen=True)
class SeedComparison:
    """Two conditions run with the same seeds: each seed's difference b - a and the exact
    sign-flip test over seeds. `p` is None where the test cannot reach `ALPHA` with this many
    seeds (fewer than `seeds_needed()`): then there is no test, only the differences."""

    seeds: tuple[str, ...]
    diffs: tuple[float, ...]
    p: float | None

    @property
    def n(self) -> int:
        return len(self.diffs)

    @property
    def mean(self) -> float:
        return sum(self.diffs) / self.n if self.n else math.nan

    @property
    def sd(self) -> float:
        """Sample standard deviation of the per-seed differences (NaN below 2 seeds)."""
        if self.n < 2:
            return math.nan
        m = self.mean
        return math.sqrt(sum((d - m) ** 2 for d in self.diffs) / (self.n - 1))

    @property
    def significant(self) -> bool:
        return self.p is not None and self.p < ALPHA

    def test_text(self) -> str:
        """`3 seeds: no test (...)` or `significant at 0.05 (p=0.016), exact sign-flip test over 6 seeds`."""
        seeds = f"{self.n} seed{'s' if self.n != 1 else ''}"
        if self.p is None:
            return (
                f"{seeds}: no test (an exact sign-flip test over {seeds} cannot give p below "
                f"{min_signflip_p(self.n):.3g}; {seeds_needed()} seeds are needed to reach {ALPHA:g})"
            )
        return f"{significance_text(self.p)}, exact sign-flip test over {seeds}"

    def diffs_text(self) -> str:
        """`+1.2 (seed 0), -0.5 (seed 1)`: each seed's difference in points."""
        return ", ".join(f"{100 * d:+.1f} (seed {s})" for s, d in zip(self.seeds, self.diffs, strict=True))


def seed_test(a: Mapping[str, float], b: Mapping[str, float]) -> SeedComparison:
    """Pair `a` and `b` ({seed: value of that seed's run}) on their shared seeds; b - a per seed
    and the exact sign-flip test, or no test where it cannot reach `ALPHA` (see `SeedComparison`)."""
    seeds = sorted(set(a) & set(b), key=lambda s: (len(str(s)), str(s)))
    diffs = tuple(b[s] - a[s] for s in seeds)
    p = signflip_p(diffs) if len(diffs) >= seeds_needed() else None
    return SeedComparison(tuple(str(s) for s in seeds), diffs, p)


# --------------------------------------------------------------------------- how tables write them


def interval_text(lo: float, hi: float) -> str:
    """`[1.1, 28.3]` (percent); `[–]` where there is no interval (NaN)."""
    if math.isnan(lo) or math.isnan(hi):
        return "[–]"
    return f"[{100 * lo:.1f}, {100 * hi:.1f}]"


def short_rate(k: int, n: int) -> str:
    """`75% [30-95]`: a table cell's rate with its 95% Wilson interval, whole percent; `-` at n=0."""
    if n <= 0:
        return "-"
    lo, hi = wilson(k, n)
    return f"{100 * k / n:.0f}% [{100 * lo:.0f}-{100 * hi:.0f}]"


def fraction_text(k: int, n: int) -> str:
    """`0.750 [0.301, 0.954] (3/4)`: a share such as V_t, its 95% Wilson interval and counts."""
    if n <= 0:
        return "- (n=0)"
    lo, hi = wilson(k, n)
    return f"{k / n:.3f} [{lo:.3f}, {hi:.3f}] ({k}/{n})"


def rate_text(k: int, n: int) -> str:
    """`6.2% [1.1, 28.3] (1/16)`: the rate, its 95% Wilson interval and the counts."""
    if n <= 0:
        return "– (n=0)"
    lo, hi = wilson(k, n)
    return f"{100 * k / n:.1f}% {interval_text(lo, hi)} ({k}/{n})"


def p_text(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"


def significance_text(p: float) -> str:
    """`significant at 0.05` / `not significant at 0.05`."""
    return ("significant" if p < ALPHA else "not significant") + f" at {ALPHA:g} ({p_text(p)})"
