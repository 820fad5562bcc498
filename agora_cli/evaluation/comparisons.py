"""Comparisons of runs, with the seed as the unit of replication.

Two runs differ by more than their items' noise: a run's seed picks its problems, its sampling and
its training order, and two seeds of one config land several points apart. Pooling the items of
all seeds and resampling them as independent pairs ignores that variance and calls differences
between equal variants significant far more often than 5% of the time. So every comparison of
runs here (Table 2's variants against full AGORA, AGORA against the isolated control, one group of
models against another) pairs the runs by seed, takes one difference per seed, and tests those:

- Per seed, the difference of the group's pass@1 (mean over members, `@majority` left out), on
  the items both runs answered when their item-level results exist, else of the runs' scores.
- Over seeds, the exact two-sided sign-flip test of the mean difference (`stats.seed_test`). Its
  smallest p with n seeds is 2 / 2^n, so below 6 seeds it cannot reach 0.05: there the report
  prints the per-seed differences and "n seeds: no test", never a p-value.

Item-level tests (exact McNemar on one pair of runs) stay valid for what they say: whether those
two runs, one seed each, differ on these items. The report labels them so.
"""

from __future__ import annotations

from collections.abc import Iterable

from agora_cli.stats import SeedComparison, p_text, seed_test

MAJORITY = "@majority"

METHOD = (
    "paired by seed, the seed as the unit: each seed's difference of the group pass@1 (on the "
    "items both runs answered where item results exist), and an exact two-sided sign-flip test "
    "over seeds, which needs 6 seeds to be able to reach 0.05 (below that: no test)"
)

# {benchmark: {key: value}}: one run's values, keyed `seed/item` or `seed` (see run_pairs).
RunValues = dict[str, dict[str, float]]


def group_item_values(per_member: dict[str, dict[str, bool]]) -> dict[str, float]:
    """{item id: share of members right} over the items every member answered (majority out)."""
    members = [m for m in per_member if m != MAJORITY]
    if not members:
        return {}
    shared = set.intersection(*(set(per_member[m]) for m in members))
    return {i: sum(per_member[m][i] for m in members) / len(members) for i in sorted(shared)}


def group_mean(per_member: dict[str, float]) -> float:
    """The group's pass@1: mean over members, '@majority' left out."""
    vals = [v for m, v in per_member.items() if m != MAJORITY]
    return sum(vals) / len(vals) if vals else float("nan")


def run_pairs(
    seed: int, scores: dict[str, dict[str, float]], items: dict[str, dict[str, dict[str, bool]]]
) -> RunValues:
    """One run's values to pair across runs: {benchmark: {key: group pass@1}}, keyed by
    `seed/item` when item-level results exist, else by `seed` (the run's group mean)."""
    out: RunValues = {}
    for bench, per in scores.items():
        by_item = group_item_values(items.get(bench, {}))
        if by_item:
            out[bench] = {f"{seed}/{i}": v for i, v in by_item.items()}
        else:
            out[bench] = {str(seed): group_mean(per)}
    return out


def _by_seed(runs: Iterable[RunValues]) -> dict[str, dict[str, dict[str, float]]]:
    """{benchmark: {seed: {key: value}}} of several runs (a later run of a seed replaces one)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for run in runs:
        for bench, vals in run.items():
            for key, v in vals.items():
                out.setdefault(bench, {}).setdefault(key.split("/", 1)[0], {})[key] = v
    return out


def _mean(values: Iterable[float]) -> float:
    vals = [v for v in values if v == v]  # NaN out
    return sum(vals) / len(vals) if vals else float("nan")


def compare_by_seed(a_runs: Iterable[RunValues], b_runs: Iterable[RunValues]) -> dict[str, SeedComparison]:
    """{benchmark: b - a per shared seed, with the seed-level test}. Within a seed the two runs'
    values are averaged over the keys (items) both have; where they share none (one run has item
    results, the other only scores), over each run's own values."""
    a, b = _by_seed(a_runs), _by_seed(b_runs)
    out: dict[str, SeedComparison] = {}
    for bench in [x for x in b if x in a]:
        va, vb = {}, {}
        for seed in set(a[bench]) & set(b[bench]):
            ka, kb = a[bench][seed], b[bench][seed]
            shared = set(ka) & set(kb) or None
            va[seed] = _mean(v for k, v in ka.items() if shared is None or k in shared)
            vb[seed] = _mean(v for k, v in kb.items() if shared is None or k in shared)
            if va[seed] != va[seed] or vb[seed] != vb[seed]:  # no value to compare at this seed
                del va[seed], vb[seed]
        if va:
            out[bench] = seed_test(va, vb)
    return out


def paired_variants(pairs: dict[str, list[RunValues]]) -> dict[str, dict[str, SeedComparison]]:
    """{variant: {benchmark: variant - full, compared by seed}}; `pairs` is {variant: [`run_pairs`
    of each of its runs]}."""
    if "full" not in pairs:
        return {}
    return {
        variant: cmp
        for variant, runs in pairs.items()
        if variant != "full" and (cmp := compare_by_seed(pairs["full"], runs))
    }


def comparison_sentence(what: str, bench: str, r: SeedComparison) -> str:
    """`- X on gsm8k: per-seed differences ...; mean ...; <the test or 'no test'>.`"""
    spread = "" if r.n < 2 else f" (sd {100 * r.sd:.1f} over seeds)"
    return (
        f"- {what} on {bench}: per-seed differences {r.diffs_text()}; mean {100 * r.mean:+.1f} "
        f"points{spread}; {r.test_text()}."
    )


def variant_sentences(paired: dict[str, dict[str, SeedComparison]]) -> list[str]:
    """Each Table 2 difference from full AGORA, by seed, in words."""
    return [
        comparison_sentence(f"`{variant}` against `full`", bench, r)
        for variant in sorted(paired)
        for bench, r in paired[variant].items()
    ]


def delta_cell(r: SeedComparison) -> str:
    """Table 2's `Δ vs full` cell: `-3.1 ± 1.2, p=0.031` or `+2.0, 3 seeds: no test`."""
    spread = "" if r.n < 2 else f" ± {100 * r.sd:.1f}"
    if r.p is None:
        return f"{100 * r.mean:+.1f}{spread}, {r.n} seed{'s' if r.n != 1 else ''}: no test"
    return f"{100 * r.mean:+.1f}{spread}, {p_text(r.p)}"
