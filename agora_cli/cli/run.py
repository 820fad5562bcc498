"""`agora run`, `agora status` and the stage commands `agora generate|solve|verify|vote`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.text import Text

from agora_cli import runner
from agora_cli.cli.app import INTERRUPTED, app, console, err_console, is_tty, leaves
from agora_cli.config import load_config
from agora_cli.events import EventBus
from agora_cli.ui import status as status_ui
from agora_cli.ui.live import LiveView
from agora_cli.ui.plain import PlainPrinter


@app.command()
def run(
    config: str = typer.Argument(..., help="YAML config, e.g. configs/tiny.yaml."),
    overrides: list[str] = typer.Argument(None, help="key=value overrides, e.g. protocol.elite_k=5"),
    steps: int = typer.Option(None, "--steps", help="Stop once this many steps are committed."),
    run_dir: Path = typer.Option(None, "--run-dir", help="Run directory (default runs/<name>)."),
    force: bool = typer.Option(False, "--force", help="Resume even if the config changed."),
) -> None:
    """Run the AGORA loop; on an existing run directory, resume from the last committed step."""
    cfg = load_config(config, overrides or [])
    bus = EventBus()
    root = Path(run_dir) if run_dir else cfg.resolved_run_dir()
    try:
        if is_tty():
            view = LiveView(console)
            bus.add(view)
            with view:
                result = runner.run(cfg, run_dir=run_dir, steps=steps, force=force, bus=bus)
        else:
            bus.add(PlainPrinter())
            result = runner.run(cfg, run_dir=run_dir, steps=steps, force=force, bus=bus)
    except BaseException as e:
        if not any(isinstance(x, KeyboardInterrupt) for x in leaves(e)):
            raise
        # Ctrl-C: say what was kept, what a resume redoes, and the exact command that resumes.
        err_console.print(
            Text("interrupted: ", style="yellow")
            + Text(runner.interrupt_summary(root))
            + Text("\nresume with: ")
            + Text(runner.resume_command(config, overrides or [], steps, root), style="bold"),
            soft_wrap=True,
            highlight=False,
        )
        raise typer.Exit(INTERRUPTED) from None
    console.print(
        Text("done", style="green")
        + Text(
            f" {result.run_dir}: {result.committed} step(s) committed (this invocation started "
            f"at step {result.first_step}); `agora status {result.run_dir}` for details"
        ),
        highlight=False,
        soft_wrap=True,
    )


@app.command()
def status(
    run_dir: Path = typer.Argument(..., help="Run directory."),
    events: int = typer.Option(10, "--events", help="How many recent events to show."),
) -> None:
    """A run's state (safe while the run is live: reads the store read-only)."""
    console.print(
        status_ui.render(status_ui.collect(run_dir, events)), markup=False, highlight=False, soft_wrap=True
    )


def _stage(stage: str, run_dir: Path) -> None:
    step, written = runner.run_stage(run_dir, stage)
    rows = ", ".join(f"{n} {table}" for table, n in written.items() if n) or "nothing (done)"
    console.print(f"step {step} {stage}: wrote {rows}", markup=False, highlight=False, soft_wrap=True)


_RUN_DIR = typer.Option(..., "--run-dir", help="Run directory of an existing run.")


@app.command()
def generate(run_dir: Path = _RUN_DIR) -> None:
    """Generate the open step's missing problems (Q-Group)."""
    _stage("generate", run_dir)


@app.command()
def solve(run_dir: Path = _RUN_DIR) -> None:
    """Solve the open step's problems: every member, every problem not yet solved."""
    _stage("solve", run_dir)


@app.command()
def verify(run_dir: Path = _RUN_DIR) -> None:
    """Verify the open step's solutions: every other member, every missing verdict."""
    _stage("verify", run_dir)


@app.command()
def vote(run_dir: Path = _RUN_DIR) -> None:
    """Vote on pairs of the open step's correct solutions (missing votes only)."""
    _stage("vote", run_dir)
