"""Uncertainty for every accuracy agora prints or plots: the single home of its statistics.

Pure functions, no I/O:

- `wilson(k, n)`: the 95% Wilson score interval of a single rate k/n (Wilson 1927). Unlike the
  normal approximation it stays inside [0, 1] and is sensible at k = 0 or k = n, which is where
  small benchmark subsets live (1/16 -> [1.1%, 28.3%]).
- `mcnemar_exact(b, c)`: the exact two-sided McNemar test for paired binary outcomes on the same
  items: b items right only under A, c right only under B; under H0 the b + c discordant items
  split Binomial(b + c, 1/2).
- `paired_bootstrap(xs, ys)`: the difference of means of paired values (the same item or seed
  under two conditions) with a percentile 95% interval and a two-sided bootstrap p-value.
- `count_ratio(k1, t1, k0, t0)`: the ratio of two event rates (k1 events in exposure t1 against
  k0 in t0, e.g. validated samples per hour of two runs) with an exact 95% interval and
  two-sided p-value: given k1 + k0 events, k1 is Binomial(k1 + k0, t1 / (t1 + t0)) when the rates
  are equal; the Clopper-Pearson interval of that share maps to the ratio.
- `rate_text`, `interval_text`, `significance_text`: how the tables write them.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

Z95 = 1.959963984540054  # the 0.975 quantile of the standard normal
ALPHA = 0.05


def wilson(k: float, n: float, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of k successes in n trials; (0, 1) when n is 0. k and n may be
    fractional (a share counted on a fixed basis, as the elite score does)."""
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


def wilson_lower(k: float, n: float, z: float = Z95) -> float:
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
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


def _binom_pmf(i: int, n: int, p: float) -> float:
    """P(X = i) for X ~ Binomial(n, p)."""
    return math.comb(n, i) * p**i * (1 - p) ** (n - i)


def _binom_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p)."""
    return sum(_binom_pmf(i, n, p) for i in range(k + 1))


def clopper_pearson(k: int, n: int, alpha: float = ALPHA) -> tuple[float, float]:
    """The exact (Clopper-Pearson) 1 - alpha interval of a binomial share k/n, by bisection."""
    if not 0 <= k <= n or n <= 0:
        raise ValueError(f"clopper_pearson: need 0 <= k <= n, n > 0 (got k={k}, n={n})")

    def solve(too_low: Callable[[float], bool]) -> float:
        lo, hi = 0.0, 1.0
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if too_low(mid) else (lo, mid)
        return (lo + hi) / 2

    lower = 0.0 if k == 0 else solve(lambda q: 1 - _binom_cdf(k - 1, n, q) < alpha / 2)
    upper = 1.0 if k == n else solve(lambda q: _binom_cdf(k, n, q) > alpha / 2)
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
    probs = [_binom_pmf(i, n, share) for i in range(n + 1)]
    p = min(1.0, sum(x for x in probs if x <= probs[k1] * (1 + 1e-9)))
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
    means = sorted(sum(d[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    lo = means[int(0.025 * (resamples - 1))]
    hi = means[int(math.ceil(0.975 * (resamples - 1)))]
    le = sum(1 for m in means if m <= 0) / resamples
    ge = sum(1 for m in means if m >= 0) / resamples
    return PairedMeans(n, diff, lo, hi, min(1.0, 2 * min(le, ge)))


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
