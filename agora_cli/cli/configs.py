"""`agora configs list|copy`: the configs shipped with agora, and an editable copy of one."""

from __future__ import annotations

import typer
from rich.text import Text

from agora_cli.cli.app import app, console

configs_app = typer.Typer(help="List the shipped configs, or copy one to edit.", no_args_is_help=True)
app.add_typer(configs_app, name="configs")


@configs_app.command("list")
def list_cmd() -> None:
    """Each shipped config with the first sentence of its header comment."""
    from agora_cli.paths import CONFIGS_DIR
    from agora_cli.shipped import shipped_configs

    configs = shipped_configs()
    width = max(len(c.name) for c in configs)
    for c in configs:
        console.print(Text(c.name.ljust(width), style="bold") + "  " + c.description, soft_wrap=True)
    console.print(
        Text(f"from {CONFIGS_DIR}; edit a copy: agora configs copy NAME DEST", style="dim"), soft_wrap=True
    )


@configs_app.command("copy")
def copy_cmd(
    name: str = typer.Argument(..., help="A shipped config, e.g. tiny.yaml (see `agora configs list`)."),
    dest: str = typer.Argument(
        ..., help="File to write (or a directory, e.g. `my-configs/`, to write it into)."
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite DEST if it exists."),
) -> None:
    """Write an editable copy of a shipped config, comments included.

    A config that extends another shipped config (e.g. ablations/no-fem.yaml extends
    paper-mixed.yaml) keeps extending it: the copy's `extends:` names the shipped parent, which is
    read from beside the copy when a file of that name is there, else from the configs shipped
    with agora. Copy the parent beside it too to edit both.
    """
    from agora_cli.shipped import copy_config

    config, written = copy_config(name, dest, force=force)
    console.print(f"[green]wrote[/green] {written} (a copy of {config.name})", highlight=False)
    console.print(Text(f"check it: agora validate {written}", style="dim"), soft_wrap=True)
