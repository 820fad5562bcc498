"""The report's comparisons of runs pair them by seed and test over seeds (the seed is the unit:
exact sign-flip test, no test below 6 seeds); McNemar on the same items stays, labelled as
item-level within one seed."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from agora_cli.evaluation.evaluate import MAJORITY, ItemResult
from agora_cli.evaluation.report import build_report
from agora_cli.paths import RunPaths
from agora_cli.stats import mcnemar_exact, wilson
from tests.test_report import MEMBERS, _sidecar, make_run

pytestmark = pytest.mark.unit

ITEMS = [f"gsm8k_test/{i}" for i in range(16)]


def write_eval(run: Path, right: dict[str, set[int]]) -> None:
    """An `agora eval` directory: results.jsonl with these items right per member, a summary."""
    d = RunPaths(run).evals / "sampled"
    d.mkdir(parents=True, exist_ok=True)
    models = {m: f"model-{m}" for m in MEMBERS}
    rows = [
        ItemResult(m, "gsm8k", item, models[m], "r", "1", "1", i in right[m])
        for m in MEMBERS
        for i, item in enumerate(ITEMS)
    ]
    # A stale row of another adapter (model name) must not be counted.
    rows.append(ItemResult("a", "gsm8k", ITEMS[0], "old-model-a", "r", "1", "1", True))
    majority = "+".join(models[m] for m in MEMBERS)
    rows += [
        ItemResult(MAJORITY, "gsm8k", item, majority, "r", "1", "1", sum(i in right[m] for m in MEMBERS) >= 2)
        for i, item in enumerate(ITEMS)
    ]
    (d / "results.jsonl").write_text("".join(json.dumps(asdict(r)) + "\n" for r in rows))
    scores = {m: {"score": len(right[m]) / 16, "n": 16} for m in MEMBERS}
    (d / "summary.json").write_text(
        json.dumps(
            {
                "scores": {"gsm8k": scores},
                "models": models,
                "members": MEMBERS,
                "adapter_versions": {m: 0 for m in MEMBERS},
                "written_at": 1.0,
                "step": 5,
            }
        )
    )


def test_agora_vs_isolated_is_a_paired_mcnemar_test_with_words(tmp_path: Path) -> None:
    agora, isolated = tmp_path / "agora", tmp_path / "isolated"
    make_run(agora)
    make_run(isolated, mode="isolated")
    # a: right on 7 items under AGORA, 1 under isolated (b = 6, c = 0 -> p = 0.03125);
    # b: 3 against 3 with one discordant item each way (p = 1); c: identical.
    write_eval(agora, {"a": set(range(7)), "b": {0, 1, 2}, "c": {5}})
    write_eval(isolated, {"a": {0}, "b": {0, 1, 9}, "c": {5}})
    md = build_report([agora, isolated], tmp_path / "out").read_text()
    assert "## AGORA against isolated evolution, paired by seed" in md
    # Seed level: one seed each, so the per-seed difference and no test. Group pass@1 per item
    # averages the members: AGORA (7 + 3 + 1) / 48, isolated (1 + 3 + 1) / 48: +12.5 points.
    assert (
        "- AGORA minus isolated on gsm8k: per-seed differences +12.5 (seed 0); mean +12.5 points; "
        "1 seed: no test (an exact sign-flip test over 1 seed cannot give p below 1; 6 seeds are "
        "needed to reach 0.05)."
    ) in md
    assert "Item-level, within one seed" in md
    row_a = next(x for x in md.splitlines() if x.startswith("| agora | isolated | gsm8k | a |"))
    assert "43.8% [23.1, 66.8] (7/16)" in row_a and "6.2% [1.1, 28.3] (1/16)" in row_a
    assert row_a.endswith("| 6 | 0 | p=0.031 |")
    assert mcnemar_exact(6, 0) == 0.03125
    assert (
        "- a on gsm8k (`agora` vs `isolated`, 16 shared items): +37.5 points, significant "
        "at 0.05 (p=0.031) (exact McNemar; item-level, within one seed)."
    ) in md
    assert (
        "- b on gsm8k (`agora` vs `isolated`, 16 shared items): +0.0 points, not significant "
        "at 0.05 (p=1.000) (exact McNemar; item-level, within one seed)."
    ) in md
    assert "| agora | isolated | gsm8k | @majority |" in md
    # Figure 5 carries each bar's 95% interval.
    fig5 = _sidecar(tmp_path / "out" / "fig5-groups.png")
    assert fig5["ci95"]["agora"]["gsm8k"]["a"] == list(wilson(7, 16))


def test_table2_with_one_seed_prints_the_difference_and_no_test(tmp_path: Path) -> None:
    """One seed per variant: 16 items all better is still one run against one run, so Table 2
    gives the per-seed difference and no p-value (the pooled items once gave p<0.001), and no
    `± 0.0` for a spread that one seed cannot have."""
    full, nofem = tmp_path / "full", tmp_path / "nofem"
    make_run(full)
    make_run(nofem, ablations={"fem": False})
    everything = set(range(16))
    write_eval(full, {"a": everything, "b": everything, "c": everything})
    write_eval(nofem, {"a": set(), "b": set(), "c": set(range(8))})
    md = build_report([full, nofem], tmp_path / "out").read_text()
    # Per item group pass@1: full 1.0 everywhere; no-fem 1/3 on items 0-7, 0 on 8-15.
    line = next(x for x in md.splitlines() if x.startswith("| no-fem |"))
    assert line == "| no-fem | 1 | 16.7 | -83.3, 1 seed: no test |"
    assert "p<0.001" not in md and "± 0.0" not in md
    assert (
        "- `no-fem` against `full` on gsm8k: per-seed differences -83.3 (seed 0); "
        "mean -83.3 points; 1 seed: no test" in md
    )
    csv_rows = (tmp_path / "out" / "table2.csv").read_text().splitlines()
    header, nofem_row = csv_rows[0].split(","), csv_rows[2].split(",")
    assert nofem_row[header.index("gsm8k_seeds")] == "1"
    assert nofem_row[header.index("gsm8k_p")] == "" and nofem_row[header.index("gsm8k_sd")] == ""


def test_report_on_a_three_seed_grid_prints_per_seed_differences_and_no_test(tmp_path: Path) -> None:
    """3 seeds x 2 variants: Table 2's Δ is the mean of the per-seed differences ± their sd, the
    sentence lists each seed's difference, and 3 seeds give no test (2/8 is the smallest p)."""
    runs = []
    # no-fem loses 2, 1 and 3 items of 16 on member a at seeds 0, 1, 2 (group: /48).
    for seed, lost in [(0, 2), (1, 1), (2, 3)]:
        full, nofem = tmp_path / f"full-{seed}", tmp_path / f"nofem-{seed}"
        make_run(full, seed=seed)
        make_run(nofem, seed=seed, ablations={"fem": False})
        write_eval(full, {"a": set(range(8)), "b": set(range(8)), "c": set(range(8))})
        write_eval(nofem, {"a": set(range(8 - lost)), "b": set(range(8)), "c": set(range(8))})
        runs += [full, nofem]
    md = build_report(runs, tmp_path / "out").read_text()
    diffs = [-100 * lost / 48 for lost in (2, 1, 3)]  # -4.2, -2.1, -6.2 points
    assert (
        "- `no-fem` against `full` on gsm8k: per-seed differences -4.2 (seed 0), -2.1 (seed 1), "
        "-6.2 (seed 2); mean -4.2 points (sd 2.1 over seeds); 3 seeds: no test (an exact sign-flip "
        "test over 3 seeds cannot give p below 0.25; 6 seeds are needed to reach 0.05)."
    ) in md
    line = next(x for x in md.splitlines() if x.startswith("| no-fem |"))
    assert line.endswith("| -4.2 ± 2.1, 3 seeds: no test |")
    assert sum(diffs) / 3 == pytest.approx(-100 * 6 / 144)
    assert "Δ vs full: the variant minus full AGORA, paired by seed, the seed as the unit" in md
