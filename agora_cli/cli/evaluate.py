"""`agora eval`, `agora report`, `agora ablate`: parse, call `agora_cli.evaluation`, render."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from agora_cli.cli.app import app, console, is_tty
from agora_cli.config import load_config
from agora_cli.errors import EvaluationUsageError
from agora_cli.events import EventBus
from agora_cli.stats import PairedBinary, rate_text, significance_text, successes
from agora_cli.ui.plain import PlainPrinter
from agora_cli.ui.progress import ProgressBars


def _csv(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _versions(items: list[str] | None) -> dict[str, int]:
    """`member=N` / `member=base` -> {member: N or 0}."""
    versions: dict[str, int] = {}
    for item in items or []:
        member, sep, raw = item.partition("=")
        if not sep or not member.strip():
            raise EvaluationUsageError(f"--adapter-version {item!r}: expected member=N or member=base")
        raw = raw.strip().lower()
        if raw in ("base", "0"):
            versions[member.strip()] = 0
        elif raw.removeprefix("v").isdigit():
            versions[member.strip()] = int(raw.removeprefix("v"))
        else:
            raise EvaluationUsageError(f"--adapter-version {item!r}: version must be a number or 'base'")
    return versions


def _scores_table(scores: dict[str, dict[str, tuple[float, int]]], title: str, order: list[str]) -> Table:
    table = Table(title=title)
    table.add_column("member")
    benches = list(scores)
    for b in benches:
        table.add_column(f"{b} pass@1 [95% CI] (k/n)", justify="right")
    members = list(order)
    for per in scores.values():
        members += [m for m in per if m not in members]
    # Members in config order, the ensemble's majority last.
    for m in sorted(members, key=lambda m: m.startswith("@")):
        cells = []
        for b in benches:
            s = scores[b].get(m)
            cells.append(rate_text(successes(*s), s[1]) if s else "–")
        table.add_row(f"[bold]{m}[/bold]" if m.startswith("@") else m, *cells)
    return table


def _paired_lines(paired: dict[str, dict[str, PairedBinary]], order: list[str]) -> list[str]:
    """Bare against with-H_t, member by member, on the same items, in words (exact McNemar)."""
    lines = []
    for b, per in paired.items():
        for m in sorted(per, key=lambda m: (m.startswith("@"), order.index(m) if m in order else len(order))):
            pb = per[m]
            lines.append(
                f"{b} {m}: bare {rate_text(pb.k_a, pb.n)} -> with H_t {rate_text(pb.k_b, pb.n)}; "
                f"right only bare {pb.only_a}, only with H_t {pb.only_b}; the difference is "
                f"{significance_text(pb.p)}, exact McNemar on the same items"
            )
    return lines


@app.command("eval")
def eval_cmd(
    config: str = typer.Argument(..., help="YAML config of the ensemble."),
    overrides: list[str] = typer.Argument(None, help="key=value config overrides."),
    run_dir: Path = typer.Option(
        None, "--run-dir", help="Run whose adapters to evaluate (default: the config's run directory)."
    ),
    benchmarks: str = typer.Option(
        None,
        help="Comma list: gsm8k,math500,aime24, gpqa=PATH (your copy of GPQA-Diamond, CSV "
        "or JSONL), NAME=PATH (JSONL of problem/answer rows) (default: evaluation.benchmarks).",
    ),
    limit: int = typer.Option(None, help="A fixed seeded subset of N items per benchmark."),
    members: str = typer.Option(None, help="Comma list of members (default: all)."),
    adapter_version: list[str] = typer.Option(
        None,
        "--adapter-version",
        help="member=N or member=base (repeatable; default: the run's live adapter).",
    ),
    greedy: bool = typer.Option(False, "--greedy", help="Greedy decoding instead of T=0.6/p=0.95."),
    out: Path = typer.Option(None, help="Results directory (default: RUN/evals/<decoding>)."),
    with_elite: Path = typer.Option(
        None,
        "--with-elite",
        help="Also score with this run's final elite history H_t in the "
        "prompt (as its solve prompt shows it), beside the bare score, with a paired test.",
    ),
) -> None:
    """pass@1 with one chain-of-thought sample per problem, per member and @majority; resumable."""
    from agora_cli.evaluation.evaluate import run_evaluation

    cfg = load_config(config, overrides or [])
    bus = EventBus()
    # Servers start and items are answered for minutes: never a blank terminal.
    view: Any = ProgressBars(console) if is_tty() else nullcontext()
    bus.add(view if is_tty() else PlainPrinter())
    with view:
        report = run_evaluation(
            cfg,
            run_dir=run_dir,
            benchmarks=_csv(benchmarks),
            limit=limit,
            members=_csv(members),
            versions=_versions(adapter_version),
            greedy=greedy or None,
            out=out,
            bus=bus,
            with_elite=with_elite,
        )
    console.print(_scores_table(report.scores, f"pass@1, {cfg.name}", list(report.versions)))
    if report.elite is not None:
        console.print(
            _scores_table(report.elite.scores, f"pass@1 with H_t of {with_elite}", list(report.versions))
        )
        for line in _paired_lines(report.paired, list(report.versions)):
            console.print(line, soft_wrap=True, markup=False)
        for bench, ids in report.elite_removed.items():
            console.print(
                f"{bench}: left out {len(ids)} item(s) whose text appears in H_t "
                f"({', '.join(ids[:5])}{', ...' if len(ids) > 5 else ''})"
            )
        console.print(f"with-H_t results in {report.elite.out_dir}/results.jsonl (comparison.json beside it)")
    from agora_cli.evaluation.contamination import NGRAM, contamination_lines

    lines = contamination_lines(report.contaminated, report.problems_checked)
    for line in lines:
        console.print(f"[yellow]contamination:[/yellow] {line}", soft_wrap=True)
    if not lines:
        console.print(
            f"contamination check: no item shares a {NGRAM}-gram with the run's "
            f"{report.problems_checked} problem(s)"
        )
    for bench, ids in report.removed.items():
        console.print(
            f"{bench}: left out {len(ids)} item(s) that are the run's calibration "
            f"items ({', '.join(ids[:5])}{', ...' if len(ids) > 5 else ''})"
        )
    console.print(
        f"asked {report.asked}, reused {report.reused} finished item(s); "
        f"results in {report.out_dir}/results.jsonl"
    )


@app.command()
def report(
    run_dirs: list[Path] = typer.Argument(..., help="One or more run directories."),
    out: Path = typer.Option(
        None, help="Report directory (default: RUN/report for one run, ./agora-report for several)."
    ),
) -> None:
    """Markdown report with the paper's figures, tables and the knowledge-flow matrix."""
    from agora_cli.evaluation.report import build_report

    path = build_report(list(run_dirs), out)
    pngs = sorted(path.parent.glob("*.png"))
    console.print(f"wrote {path} ({len(pngs)} figure(s))")


@app.command()
def ablate(
    config: str = typer.Argument(..., help="Base config (full AGORA)."),
    overrides: list[str] = typer.Argument(None, help="key=value overrides for every variant."),
    seeds: str = typer.Option("0,1,2", help="Comma list of seeds."),
    steps: int = typer.Option(None, help="Loop steps per run (required unless --dry-run)."),
    variants: str = typer.Option("all", help="all, or a comma list of switches (e.g. fem,lora)."),
    limit: int = typer.Option(None, help="Evaluate on a fixed seeded subset of N items."),
    out: Path = typer.Option(None, help="Grid directory (default: runs/<name>-ablate)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List the runs without running them."),
) -> None:
    """Table 2: full AGORA and each ablation switch off, over seeds; Markdown + CSV table."""
    from agora_cli import ablate as ab

    base = load_config(config, overrides or [])
    out = out or Path("runs") / f"{base.name}-ablate"
    try:
        seed_list = [int(s) for s in _csv(seeds) or []]
    except ValueError:
        raise EvaluationUsageError(f"--seeds {seeds!r}: expected a comma list of integers") from None
    if not seed_list:
        raise EvaluationUsageError("--seeds is empty")
    grid = ab.plan(config, seed_list, ab.parse_variants(variants), out, overrides or [])
    if dry_run:
        table = Table(title=f"{len(grid)} run(s) for {base.name}")
        for col in ("variant", "seed", "run directory", "overrides"):
            table.add_column(col)
        for run, _ in grid:
            table.add_row(
                run.variant,
                str(run.seed),
                str(run.run_dir),
                " ".join(o for o in run.overrides if o.startswith("ablations.")) or "–",
            )
        console.print(table)
        return
    if steps is None:
        raise EvaluationUsageError("--steps N is required to run the grid (each run stops after N steps)")
    ab.check_steps(grid, steps)
    md, csv_path = ab.run_ablation(
        grid, out, run_fn=ab.loop_run_fn, eval_fn=ab.eval_run_fn, steps=steps, limit=limit, bus=EventBus()
    )
    console.print(md.read_text())
    console.print(f"wrote {md} and {csv_path}")
