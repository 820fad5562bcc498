"""`agora train --run-dir DIR [--member M] [--config CONFIG]`: a training round now."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from agora_cli.cli.app import app, console
from agora_cli.errors import TrainingError
from agora_cli.events import EventBus
from agora_cli.training.manual import train_now


class _ProgressSink:
    """training_* events -> one rich progress bar per member (step, loss, tokens/s, ETA)."""

    def __init__(self, progress: Progress):
        self.progress = progress
        self.tasks: dict[str, TaskID] = {}

    def __call__(self, e: dict[str, Any]) -> None:
        member = e.get("member")
        if not isinstance(member, str):  # every training_* event names its member
            return
        if e["kind"] == "training_started":
            self.tasks[member] = self.progress.add_task(member, total=None, loss="", tps="")
        elif e["kind"] == "training_progress" and member in self.tasks and e["step"] > 0:
            # (step 0 is the memory plan, with no loss yet)
            self.progress.update(
                self.tasks[member],
                completed=e["step"],
                total=e["total_steps"],
                loss=f"loss {e['loss']:.4f}",
                tps=f"{e['tokens_per_s']:.0f} tok/s",
            )
        elif e["kind"] == "training_failed" and member in self.tasks:
            self.progress.update(self.tasks[member], loss="[red]failed[/red]")


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


@app.command()
def train(
    run_dir: Path = typer.Option(..., "--run-dir", help="Run directory of an existing run."),
    member: str = typer.Option(None, "--member", help="Train only this member."),
    config: Path = typer.Option(None, "--config", help="Config (default: the run's config.yaml)."),
) -> None:
    """Train every member on the unconsumed buffer now (even below the threshold)."""
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[loss]}"),
        TextColumn("{task.fields[tps]}"),
        TimeRemainingColumn(),
        console=console,
    )
    with progress:
        out = train_now(run_dir, config=config, member=member, bus=EventBus([_ProgressSink(progress)]))
    if out.round_id is None:
        console.print("nothing to train: the buffer holds no unconsumed rows")
        return
    table = Table(title=f"round {out.round_id}: {out.rows} rows, {out.status}")
    for col in ("member", "version", "status", "loss first→last", "tokens/s", "peak MB", "path"):
        table.add_column(col)
    for a in out.adapters:
        table.add_row(
            a.member,
            f"v{a.version}",
            a.status,
            f"{_fmt(a.loss_first, '.4f')} → {_fmt(a.loss_last, '.4f')}",
            _fmt(a.tokens_per_s, ".0f"),
            _fmt(a.peak_memory_mb, ".0f"),
            a.path,
        )
    console.print(table)
    if not out.attached:
        console.print("no servers attached: the new adapters go live when the run resumes")
    if out.status != "live":
        raise TrainingError(
            f"round {out.round_id} did not finish ({out.error}); run `agora train` again to retry "
            "it with the same rows"
        )
