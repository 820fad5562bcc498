"""Comparisons of runs treat the seed as the unit: the sign-flip test over seeds holds its level
when runs vary from seed to seed, where resampling the pooled items of all seeds does not."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from agora_cli.evaluation.comparisons import compare_by_seed, delta_cell, paired_variants, run_pairs
from agora_cli.stats import (
    ALPHA,
    min_signflip_p,
    paired_bootstrap,
    seed_test,
    seeds_needed,
    signflip_p,
)

pytestmark = pytest.mark.unit

SEED_SD = 0.03  # run-to-run standard deviation of a run's pass@1: 3 points


def simulate_equal_variants(rng: np.random.Generator, grids: int, seeds: int, items: int):
    """`grids` grids of two equal variants (the same expected pass@1 per item), each run with a
    seed effect of sd `SEED_SD` on every item's chance: ({0, 1} arrays of shape (grids, seeds,
    items) for variant a and b, on the same items)."""
    difficulty = rng.uniform(0.2, 0.8, size=(grids, 1, items))  # an item is as hard under a and b
    shift_a = rng.normal(0, SEED_SD, size=(grids, seeds, 1))
    shift_b = rng.normal(0, SEED_SD, size=(grids, seeds, 1))
    a = rng.random((grids, seeds, items)) < np.clip(difficulty + shift_a, 0, 1)
    b = rng.random((grids, seeds, items)) < np.clip(difficulty + shift_b, 0, 1)
    return a.astype(float), b.astype(float)


def upper_limit(rate: float, trials: int) -> float:
    """The nominal rate plus 2 Monte Carlo standard errors: a test at its level stays below."""
    return rate + 2 * math.sqrt(rate * (1 - rate) / trials)


def test_seed_level_test_holds_its_level_with_run_to_run_variance() -> None:
    """8 seeds x 300 items, equal variants, 3 points of seed sd, 2000 grids: the exact sign-flip
    test over seeds rejects at most 5% of the time (plus Monte Carlo error)."""
    rng = np.random.default_rng(7)
    grids = 2000
    a, b = simulate_equal_variants(rng, grids, seeds=8, items=300)
    per_seed_a, per_seed_b = a.mean(axis=2), b.mean(axis=2)  # one value per run
    rejected = 0
    for g in range(grids):
        r = seed_test(dict(enumerate(per_seed_a[g])), dict(enumerate(per_seed_b[g])))
        assert r.p is not None
        rejected += r.significant
    rate = rejected / grids
    assert rate <= upper_limit(ALPHA, grids), f"seed-level test rejected {rate:.3f} of equal grids"
    assert rate > 0.01  # and it is a test: with 8 seeds it can and does reject


def test_pooled_item_bootstrap_is_anti_conservative_on_the_same_grids() -> None:
    """The old way, resampling the (seed, item) pairs of all seeds as independent, on 3 seeds x
    500 items of equal variants: it rejects far more often than 5%, failing the check the
    seed-level test passes; the seed-level test on the same grids gives no p at all (3 seeds)."""
    rng = np.random.default_rng(11)
    grids = 30
    a, b = simulate_equal_variants(rng, grids, seeds=3, items=500)
    rejected = 0
    for g in range(grids):
        pooled = paired_bootstrap(a[g].ravel().tolist(), b[g].ravel().tolist(), resamples=200, seed=g)
        rejected += pooled.significant
        assert seed_test(dict(enumerate(a[g].mean(axis=1))), dict(enumerate(b[g].mean(axis=1)))).p is None
    assert rejected / grids > upper_limit(ALPHA, grids), f"pooled bootstrap rejected {rejected}/{grids}"


def test_signflip_p_exact_values() -> None:
    # All 6 differences positive: only that pattern and its mirror are as extreme: 2/64.
    assert signflip_p([0.01, 0.02, 0.03, 0.01, 0.02, 0.05]) == pytest.approx(2 / 64)
    # One of 6 negative and small: patterns with |sum| >= 0.12 of 2^6 (enumerated by hand below).
    d = [0.01, 0.02, 0.03, 0.01, 0.02, -0.05]
    brute = sum(
        1
        for k in range(64)
        if abs(sum(x if (k >> i) & 1 else -x for i, x in enumerate(map(abs, d)))) >= abs(sum(d)) - 1e-12
    )
    assert signflip_p(d) == pytest.approx(brute / 64)
    assert signflip_p([0.0, 0.0, 0.0]) == 1.0
    assert signflip_p([]) == 1.0


def test_too_few_seeds_give_no_test() -> None:
    """Below 6 seeds the two-sided sign-flip p cannot reach 0.05 (5 seeds: 2/32 = 0.0625), so no
    p-value is reported, however large and consistent the differences."""
    assert seeds_needed() == 6 and min_signflip_p(5) == 0.0625 and min_signflip_p(6) == 0.03125
    for n in range(1, 6):
        r = seed_test({s: 0.5 for s in range(n)}, {s: 0.9 for s in range(n)})
        assert r.p is None and not r.significant
        assert r.test_text().startswith(f"{n} seed{'s' if n > 1 else ''}: no test")
    three = seed_test({0: 0.5, 1: 0.6, 2: 0.55}, {0: 0.6, 1: 0.62, 2: 0.65})
    assert "cannot give p below 0.25" in three.test_text()
    assert three.diffs_text() == "+10.0 (seed 0), +2.0 (seed 1), +10.0 (seed 2)"
    assert delta_cell(three) == "+7.3 ± 4.6, 3 seeds: no test"
    one = seed_test({0: 0.5}, {0: 0.3})
    assert delta_cell(one) == "-20.0, 1 seed: no test" and math.isnan(one.sd)
    six = seed_test({s: 0.5 for s in range(6)}, {s: 0.45 - 0.01 * s for s in range(6)})
    assert six.p == pytest.approx(2 / 64) and six.significant
    assert six.test_text() == "significant at 0.05 (p=0.031), exact sign-flip test over 6 seeds"


def test_variants_pair_by_seed_within_the_items_both_answered() -> None:
    """Per seed, the difference is over the items both runs answered; seeds only one variant has
    are left out; the unit of the test is the seed, not the item."""
    items = {f"i{k}": {"a": k % 2 == 0, "b": True} for k in range(10)}  # a right on 5 of 10

    def outcomes(right_a: set[int]) -> dict:
        return {"gsm8k": {"a": {f"i{k}": k in right_a for k in range(10)}, "b": {i: True for i in items}}}

    full = [run_pairs(s, {"gsm8k": {"a": 0.5, "b": 1.0}}, outcomes(set(range(5)))) for s in range(7)]
    worse = [run_pairs(s, {"gsm8k": {"a": 0.3, "b": 1.0}}, outcomes(set(range(3)))) for s in range(6)]
    [(bench, r)] = paired_variants({"full": full, "no-fem": worse})["no-fem"].items()
    assert bench == "gsm8k" and r.n == 6  # seed 6 has no no-fem run
    assert r.diffs == pytest.approx([-0.1] * 6)  # group mean 0.75 -> 0.65 on every seed
    assert r.p == pytest.approx(2 / 64)
    # A run with only scores pairs with one that has items at the seed level.
    mixed = compare_by_seed(
        [{"gsm8k": {"0": 0.7}}], [run_pairs(0, {"gsm8k": {"a": 0.5, "b": 1.0}}, outcomes(set(range(5))))]
    )
    assert mixed["gsm8k"].diffs == pytest.approx([0.75 - 0.7])


def test_groups_of_models_are_compared_by_seed(tmp_path: Path) -> None:
    """Homogeneous against mixed: runs are grouped by their members' models and paired by seed;
    the report's sentence gives each seed's difference and, with 3 seeds, no test."""
    from agora_cli.evaluation.report import RunInfo, group_comparison

    def run(name: str, models: list[str], seed: int, score: float) -> RunInfo:
        members = [{"name": f"m{i}", "model": m} for i, m in enumerate(models)]
        summary = {"scores": {"gsm8k": {f"m{i}": {"score": score, "n": 50} for i in range(len(models))}}}
        return RunInfo(
            root=tmp_path / f"{name}-{seed}",
            label=f"{name}-{seed}",
            config={"name": name, "members": members},
            members=[m["name"] for m in members],
            seed=seed,
            evals={"sampled": summary},
        )

    mixed = [run("mixed", ["x/a", "y/b"], s, 0.40 + 0.01 * s) for s in range(3)]
    homo = [run("homo", ["x/a", "x/a2"], s, 0.30 + 0.02 * s) for s in range(3)]
    [line] = group_comparison(mixed + homo)
    assert line == (
        "- `homo (x/a, x/a2)` minus `mixed (x/a, y/b)` on gsm8k: per-seed differences -10.0 (seed 0), "
        "-9.0 (seed 1), -8.0 (seed 2); mean -9.0 points (sd 1.0 over seeds); 3 seeds: no test (an "
        "exact sign-flip test over 3 seeds cannot give p below 0.25; 6 seeds are needed to reach 0.05)."
    )
    assert group_comparison(mixed) == []  # one group: nothing to compare
