"""`agora validate CONFIG [key=value ...]`: every problem with its YAML path, exit 2 if any."""

from __future__ import annotations

import typer

from agora_cli.cli.app import app, console
from agora_cli.config import load_config


@app.command()
def validate(
    config: str = typer.Argument(..., help="YAML config to check."),
    overrides: list[str] = typer.Argument(None, help="key=value overrides, e.g. protocol.elite_k=5"),
) -> None:
    """Check a config (and overrides) without running anything."""
    cfg = load_config(config, overrides or [])
    console.print(
        f"[green]ok[/green] {config}: {len(cfg.members)} members "
        f"({', '.join(m.name for m in cfg.members)}), backends: {', '.join(cfg.backends)}"
    )
