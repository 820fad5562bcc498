"""`agora ablate`: the paper's Table 2, full AGORA and each switch off, over several seeds.

Every variant is the base config with `ablations.<switch>=false` (the same overrides the shipped
`configs/ablations/*.yaml` state), a seed and its own run directory under `--out`. Each run is
driven by the loop, then evaluated like `agora eval`; the table holds the group's mean pass@1
(mean over members) per benchmark as mean ± standard deviation over seeds, and each variant's
difference from full AGORA paired by seed, the seed being the unit of replication: the per-seed
differences and an exact sign-flip test over seeds, or "n seeds: no test" below the 6 seeds that
test needs to reach 0.05 (evaluation/comparisons.py).
Re-running the same command resumes: the loop resumes each run from its last committed step and
the evaluation skips answered items.

It drives the orchestrator (`runner`) and the evaluator, so it sits beside `runner.py`, above both,
not inside `evaluation/`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agora_cli import runner
from agora_cli.config import Config, load_config
from agora_cli.errors import EvaluationError, EvaluationUsageError
from agora_cli.evaluation.comparisons import (
    METHOD,
    RunValues,
    group_mean,
    paired_variants,
    run_pairs,
    variant_sentences,
)
from agora_cli.evaluation.evaluate import run_evaluation
from agora_cli.evaluation.report import SWITCHES, item_outcomes, load_run, table2
from agora_cli.events import NULL_BUS, EventBus

FULL = "full"
VARIANTS = (FULL, *SWITCHES)

# run_fn(cfg, steps, bus): run (or resume) the loop of `cfg` into cfg.run_dir for `steps` steps.
RunFn = Callable[[Config, int | None, EventBus], None]
# eval_fn(cfg, limit, bus) -> {benchmark: {member: pass@1}} for the run in cfg.run_dir.
EvalFn = Callable[[Config, int | None, EventBus], dict[str, dict[str, float]]]


@dataclass(frozen=True)
class PlannedRun:
    """One (variant, seed) run of the grid."""

    variant: str
    seed: int
    run_dir: Path
    overrides: tuple[str, ...]

    @property
    def label(self) -> str:
        return f"{self.variant}/seed{self.seed}"


def variant_name(switch: str) -> str:
    return FULL if switch == FULL else f"no-{switch.replace('_', '-')}"


def parse_variants(spec: str) -> list[str]:
    """'all' or a comma list of switches (`fem`, `no-fem` and `full` all accepted)."""
    if spec.strip() in ("", "all"):
        return list(VARIANTS)
    out = []
    for raw in spec.split(","):
        name = raw.strip().removeprefix("no-").replace("-", "_")
        if name not in VARIANTS:
            raise EvaluationUsageError(
                f"unknown variant {raw.strip()!r}; choose from all, {', '.join(VARIANTS)}"
            )
        if name not in out:
            out.append(name)
    return out


def plan(
    config: str | Path,
    seeds: list[int],
    variants: list[str],
    out: Path,
    overrides: list[str] | None = None,
) -> list[tuple[PlannedRun, Config]]:
    """The grid of runs with their validated configs (an invalid variant fails before any run)."""
    grid = []
    for switch in variants:
        for seed in seeds:
            run_dir = out / variant_name(switch) / f"seed{seed}"
            extra = [] if switch == FULL else [f"ablations.{switch}=false"]
            ov = (*(overrides or []), *extra, f"seed={seed}", f"run_dir={run_dir}")
            cfg = load_config(config, list(ov))
            cfg.name = f"{cfg.name}-{variant_name(switch)}-s{seed}"[:64]
            grid.append((PlannedRun(variant_name(switch), seed, run_dir, ov), cfg))
    return grid


def min_steps(switch: str, cfg: Config) -> int:
    """The fewest loop steps after which turning `switch` off can change what a run does.

    Anchors are taken after every `anchor_every`-th step (k = anchor_every): Eq. 2 needs two of
    them, so F_t first exists after step 2k - 1 and FEM first moves a difficulty at step 2k; a
    plateau needs `plateau_patience` + 1 anchors, so the strategy first switches at step
    (patience + 1) k. Every member is scored at every anchor whether or not LoRA changed its
    adapter, so these hold with `lora` off too. The elite history, difficulty control and
    training act from step 1 on (training also needs `buffer_threshold` validated rows, which no
    step count guarantees; FEM also needs a drop beyond the anchor's noise).
    """
    k, patience = cfg.protocol.anchor_every, cfg.protocol.surprise.plateau_patience
    fem_acts, strategy_acts = 2 * k + 1, (patience + 1) * k + 1
    return {
        FULL: 1,
        "valid_vote": 1,
        "random_qgen": 1,
        "quality_vote": 2,
        "elite_icl": 2,
        "explanation": 2,
        "difficulty_control": 2,
        "lora": 2,
        "fem": fem_acts,
        "dynamic_strategy": strategy_acts,
        # Without anchors F_t is undefined: the comparison needs FEM and the strategy to have
        # acted in the full run, the later of the two.
        "external_anchor": max(fem_acts, strategy_acts if cfg.ablations.dynamic_strategy else 0),
    }[switch]


def check_steps(grid: list[tuple[PlannedRun, Config]], steps: int) -> None:
    """Refuse a step count too short for some variant's switch to act, naming the minimum."""
    short = {}
    for run, cfg in grid:
        switch = FULL if run.variant == FULL else run.variant[3:].replace("-", "_")
        need = min_steps(switch, cfg)
        if steps < need:
            short[run.variant] = need
    if short:
        worst = max(short.values())
        listed = ", ".join(f"{v} needs {n}" for v, n in sorted(short.items()))
        raise EvaluationUsageError(
            f"--steps {steps} is too short for these switches to act ({listed}; anchors every "
            f"protocol.anchor_every steps); use --steps {worst} or more, or lower "
            "protocol.anchor_every"
        )


def run_ablation(
    grid: list[tuple[PlannedRun, Config]],
    out: Path,
    *,
    run_fn: RunFn,
    eval_fn: EvalFn,
    steps: int | None = None,
    limit: int | None = None,
    bus: EventBus = NULL_BUS,
) -> tuple[Path, Path]:
    """Run, evaluate and tabulate every planned run. Returns (table2.md, table2.csv) paths."""
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results: dict[str, dict] = {}
    if results_path.exists():
        results = json.loads(results_path.read_text())
    for k, (run, cfg) in enumerate(grid):
        bus.emit(
            "ablation_run",
            variant=run.variant,
            seed=run.seed,
            index=k,
            total=len(grid),
            run_dir=str(run.run_dir),
        )
        run_fn(cfg, steps, bus)
        scores = eval_fn(cfg, limit, bus)
        results[run.label] = {
            "variant": run.variant,
            "seed": run.seed,
            "run_dir": str(run.run_dir),
            "scores": scores,
        }
        # Written after every run so an interrupted grid keeps what finished.
        results_path.write_text(json.dumps(results, indent=2))
    grouped: dict[str, list[dict[str, float]]] = {}
    pairs: dict[str, list[RunValues]] = {}
    for r in results.values():
        grouped.setdefault(r["variant"], []).append({b: group_mean(per) for b, per in r["scores"].items()})
        pairs.setdefault(r["variant"], []).append(
            run_pairs(r["seed"], r["scores"], _items_of(Path(r["run_dir"])))
        )
    paired = paired_variants(pairs)
    md, csv_text = table2(grouped, paired)
    md_path, csv_path = out / "table2.md", out / "table2.csv"
    words = variant_sentences(paired)
    md_path.write_text(
        "# Table 2: ablations (group mean pass@1 %, mean ± sd over seeds)\n\n"
        + md
        + (
            f"\nΔ vs full: the variant minus full AGORA, {METHOD}.\n\n" + "\n".join(words) + "\n"
            if words
            else ""
        )
    )
    csv_path.write_text(csv_text)
    return md_path, csv_path


def _items_of(run_dir: Path) -> dict[str, dict[str, dict[str, bool]]]:
    """The run's item-level evaluation results ({} when it has none to pair on)."""
    try:
        return item_outcomes(load_run(run_dir))
    except EvaluationError:
        return {}


# --------------------------------------------------------------------------- the real pieces


def loop_run_fn(cfg: Config, steps: int | None, bus: EventBus) -> None:
    """Run the AGORA loop (`agora run`) until `steps` steps are committed, resuming the run."""
    runner.run(cfg, run_dir=cfg.run_dir, steps=steps, bus=bus)


def eval_run_fn(cfg: Config, limit: int | None, bus: EventBus) -> dict[str, dict[str, float]]:
    """Evaluate the run in cfg.run_dir on cfg.evaluation.benchmarks (live adapters)."""
    report = run_evaluation(cfg, limit=limit, bus=bus)
    return {b: {m: s for m, (s, _) in per.items()} for b, per in report.scores.items()}
