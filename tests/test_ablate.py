"""`agora ablate`: the Table 2 grid, its variant configs, and the mean ± sd table."""

from __future__ import annotations

import csv
import io
import statistics
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agora_cli import ablate as ab
from agora_cli.cli import app
from agora_cli.config import Config, load_config
from agora_cli.errors import EvaluationError
from agora_cli.events import EventBus
from agora_cli.paths import CONFIGS_DIR
from agora_cli.store import Store

TINY = str(CONFIGS_DIR / "tiny-transformers.yaml")
PAPER = str(CONFIGS_DIR / "paper-mixed.yaml")


@pytest.mark.unit
def test_plan_builds_one_config_per_variant_and_seed(tmp_path: Path) -> None:
    grid = ab.plan(TINY, [0, 1], ab.parse_variants("all"), tmp_path)
    assert len(grid) == 11 * 2
    seen = set()
    for run, cfg in grid:
        seen.add((run.variant, run.seed))
        assert cfg.seed == run.seed
        assert Path(cfg.run_dir) == tmp_path / run.variant / f"seed{run.seed}"
        off = [s for s in ab.SWITCHES if not getattr(cfg.ablations, s)]
        assert off == ([] if run.variant == "full" else [run.variant[3:].replace("-", "_")])
    assert ("no-difficulty-control", 1) in seen and ("full", 0) in seen


@pytest.mark.unit
@pytest.mark.parametrize("switch", ab.SWITCHES)
def test_variant_configs_match_the_shipped_ablation_configs(tmp_path: Path, switch: str) -> None:
    [(run, cfg)] = ab.plan(PAPER, [0], [switch], tmp_path)
    shipped = load_config(CONFIGS_DIR / "ablations" / f"{run.variant}.yaml")
    assert cfg.ablations == shipped.ablations


@pytest.mark.unit
def test_parse_variants() -> None:
    assert ab.parse_variants("fem,no-lora,full") == ["fem", "lora", "full"]
    assert ab.parse_variants("difficulty-control") == ["difficulty_control"]
    with pytest.raises(EvaluationError, match="unknown variant"):
        ab.parse_variants("fem,warp_drive")


@pytest.mark.unit
def test_dry_run_lists_runs_without_running(tmp_path: Path) -> None:
    out = tmp_path / "grid"
    result = CliRunner().invoke(
        app,
        ["ablate", TINY, "--seeds", "0,1", "--variants", "fem,lora", "--out", str(out), "--dry-run"],
    )
    assert result.exit_code == 0, result.output
    assert "4 run(s)" in result.output
    assert "ablations.fem=false" in result.output and "ablations.lora=false" in result.output
    assert not out.exists()


# Group pass@1 each fake run reaches: a base per variant, plus a seed-dependent wobble.
BASE = {"full": 0.6, "no-fem": 0.5, "no-lora": 0.4}


def _variant(cfg: Config) -> str:
    off = [s for s in ab.SWITCHES if not getattr(cfg.ablations, s)]
    return ab.variant_name(off[0]) if off else "full"


def fake_run(cfg: Config, steps: int | None, bus: EventBus) -> None:
    """Stands in for the loop: writes `steps` committed steps and an anchor per member."""
    with Store(Path(cfg.run_dir) / "agora.sqlite") as s:
        for t in range(steps or 1):
            s.execute(
                "INSERT OR IGNORE INTO steps(step, started_at, committed_at, difficulty) "
                "VALUES (?, 0, 1, 1.0)",
                (t,),
            )
        for m in cfg.members:
            s.execute(
                "INSERT OR IGNORE INTO anchors(step, member, benchmark, score, n, created_at)"
                " VALUES (?, ?, 'gsm8k', ?, 8, 0)",
                (steps or 1, m.name, BASE[_variant(cfg)]),
            )


def fake_eval(cfg: Config, limit: int | None, bus: EventBus) -> dict[str, dict[str, float]]:
    """Stands in for `agora eval`: member scores around the variant's base, seed-dependent."""
    base = BASE[_variant(cfg)] + 0.02 * cfg.seed
    return {
        "gsm8k": {"smol-a": base - 0.1, "smol-b": base, "gemma": base + 0.1, "@majority": 0.99},
        "math500": {"smol-a": base / 2, "smol-b": base / 2, "gemma": base / 2},
    }


@pytest.mark.unit
def test_run_ablation_writes_mean_and_sd_tables(tmp_path: Path) -> None:
    out = tmp_path / "grid"
    grid = ab.plan(TINY, [0, 1, 2], ["full", "fem", "lora"], out)
    md, csv_path = ab.run_ablation(grid, out, run_fn=fake_run, eval_fn=fake_eval, steps=3)
    for run, _ in grid:  # every run happened in its own directory
        with Store(run.run_dir / "agora.sqlite", readonly=True) as s:
            assert s.last_committed_step() == 2
    rows = {r["variant"]: r for r in csv.DictReader(io.StringIO(csv_path.read_text()))}
    assert list(rows) == ["full", "no-fem", "no-lora"]
    for variant, base in BASE.items():
        # Group mean = mean over members (majority left out) = base + 0.02 * seed.
        per_seed = [base + 0.02 * s for s in (0, 1, 2)]
        assert rows[variant]["seeds"] == "3"
        assert float(rows[variant]["gsm8k_mean"]) == pytest.approx(statistics.fmean(per_seed))
        assert float(rows[variant]["gsm8k_sd"]) == pytest.approx(statistics.stdev(per_seed))
        assert float(rows[variant]["math500_mean"]) == pytest.approx(statistics.fmean(per_seed) / 2)
    text = md.read_text()
    assert "| full | 3 | 62.0 ± 2.0 | 31.0 ± 1.0 |" in text
    assert "| no-lora | 3 | 42.0 ± 2.0 | 21.0 ± 1.0 |" in text
    # Paired by seed: no-lora is 20 points below full at every seed; 3 seeds cannot be tested.
    assert "| no-lora | 3 | 42.0 ± 2.0 | 21.0 ± 1.0 | -20.0 ± 0.0, 3 seeds: no test |" in text
    assert "per-seed differences -20.0 (seed 0), -20.0 (seed 1), -20.0 (seed 2)" in text
    assert float(rows["no-lora"]["gsm8k_delta"]) == pytest.approx(-0.2)
    assert rows["no-lora"]["gsm8k_p"] == "" and rows["no-lora"]["gsm8k_seeds"] == "3"


@pytest.mark.unit
def test_run_ablation_tests_over_seeds_once_there_are_enough(tmp_path: Path) -> None:
    """6 seeds, no-fem below full at each: the exact sign-flip p is 2/64, printed with the test."""
    out = tmp_path / "grid"
    grid = ab.plan(TINY, list(range(6)), ["full", "fem"], out)
    md, csv_path = ab.run_ablation(grid, out, run_fn=fake_run, eval_fn=fake_eval, steps=1)
    text = md.read_text()
    assert "| no-fem | 6 | 55.0 ± 3.7 | 27.5 ± 1.9 | -10.0 ± 0.0, p=0.031 |" in text
    assert "significant at 0.05 (p=0.031), exact sign-flip test over 6 seeds" in text
    rows = {r["variant"]: r for r in csv.DictReader(io.StringIO(csv_path.read_text()))}
    assert float(rows["no-fem"]["gsm8k_p"]) == pytest.approx(2 / 64)


@pytest.mark.unit
def test_interrupted_grid_keeps_finished_runs(tmp_path: Path) -> None:
    out = tmp_path / "grid"
    grid = ab.plan(TINY, [0, 1], ["full"], out)
    calls: list[int] = []

    def failing_eval(cfg: Config, limit: int | None, bus: EventBus) -> dict:
        calls.append(cfg.seed)
        if cfg.seed == 1:
            raise EvaluationError("server went away")
        return fake_eval(cfg, limit, bus)

    with pytest.raises(EvaluationError):
        ab.run_ablation(grid, out, run_fn=fake_run, eval_fn=failing_eval, steps=1)
    assert "full/seed0" in (out / "results.json").read_text()
    # Re-running only the missing seed completes the table with both seeds.
    md, _ = ab.run_ablation(grid[1:], out, run_fn=fake_run, eval_fn=fake_eval, steps=1)
    assert "| full | 2 | 61.0 ± 1.4 |" in md.read_text()


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_ablate_command_runs_the_real_loop_and_evaluator(tmp_path: Path) -> None:
    """`agora ablate` end to end on the scripted fake ensemble: loop, evaluation, table."""
    import yaml

    from agora_cli.datasets import load_benchmark, subset
    from tests.fakes.ensemble import config_dict, responder
    from tests.fakes.openai_server import FakeOpenAI, Request

    gold = {it.problem: it.answer for it in subset(load_benchmark("gsm8k"), 3)}
    script = responder()

    def respond(req: Request):
        if req.role != "evaluate":
            return script(req)
        problem = req.user.split("Problem:", 1)[1].rsplit("Solution:", 1)[0].strip()
        # alpha is always right, the others never: group mean 1/3, majority 0.
        ans = gold[problem] if req.model == "alpha" else "-1"
        return f"Adding up, \\boxed{{{ans}}}"

    out = tmp_path / "grid"
    with FakeOpenAI(respond) as fake:
        cfg_path = tmp_path / "base.yaml"
        cfg_path.write_text(yaml.safe_dump(config_dict(fake.url, tmp_path / "unused")))
        result = CliRunner().invoke(
            app,
            [
                "ablate",
                str(cfg_path),
                "evaluation.benchmarks=[gsm8k]",
                "--seeds",
                "0,1",
                "--variants",
                "full,valid_vote",
                "--steps",
                "1",
                "--limit",
                "3",
                "--out",
                str(out),
            ],
        )
        assert result.exit_code == 0, result.output
    for variant in ("full", "no-valid-vote"):
        for seed in (0, 1):
            run_dir = out / variant / f"seed{seed}"
            with Store(run_dir / "agora.sqlite", readonly=True) as s:
                assert s.last_committed_step() == 0
            stored = yaml.safe_load((run_dir / "config.yaml").read_text())
            assert stored["seed"] == seed
            assert stored["ablations"]["valid_vote"] is (variant == "full")
            assert (run_dir / "evals" / "sampled" / "summary.json").exists()
    table = (out / "table2.md").read_text()
    assert "| full | 2 | 33.3 ± 0.0 |" in table
    assert "| no-valid-vote | 2 | 33.3 ± 0.0 |" in table
    # Paired by seed on the 3 items both variants answered: no difference, and 2 seeds: no test.
    assert (
        "`no-valid-vote` against `full` on gsm8k: per-seed differences +0.0 (seed 0), +0.0 (seed 1); "
        "mean +0.0 points (sd 0.0 over seeds); 2 seeds: no test" in table
    )
    assert "p=" not in table.split("Δ vs full")[-1]


@pytest.mark.unit
def test_ablate_refuses_a_step_count_too_short_for_a_switch_to_act(tmp_path: Path) -> None:
    # tiny-transformers.yaml anchors every 2 steps with plateau_patience 2: FEM first moves d at step 2 * 2,
    # the strategy first switches at step 3 * 2 (so no-fem needs 5 steps, no-dynamic-strategy 7).
    cfg = load_config(TINY)
    k, p = cfg.protocol.anchor_every, cfg.protocol.surprise.plateau_patience
    assert ab.min_steps("fem", cfg) == 2 * k + 1
    assert ab.min_steps("dynamic_strategy", cfg) == (p + 1) * k + 1
    out = tmp_path / "grid"
    result = CliRunner().invoke(
        app,
        [
            "ablate",
            TINY,
            "--seeds",
            "0",
            "--variants",
            "full,fem,dynamic_strategy",
            "--steps",
            str(2 * k),
            "--out",
            str(out),
        ],
    )
    assert result.exit_code != 0
    text = " ".join(result.output.split())
    assert f"no-fem needs {2 * k + 1}" in text
    assert f"use --steps {(p + 1) * k + 1} or more" in text
    assert not out.exists()  # refused before any run
    grid = ab.plan(TINY, [0], ["full", "valid_vote", "elite_icl"], out)
    ab.check_steps(grid, 2)
    with pytest.raises(EvaluationError, match="no-elite-icl needs 2"):
        ab.check_steps(grid, 1)
