"""The Typer app and the one place where AgoraError becomes a red line and an exit code."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.text import Text

from agora_cli.errors import AgoraError

app = typer.Typer(
    name="agora",
    help="AGORA group distillation (arXiv 2507.21166) on your own ensemble of small models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)
state: dict[str, Any] = {"debug": False}

F = TypeVar("F", bound=Callable[..., Any])


def handle_errors(fn: F) -> F:
    """Decorator for commands: AgoraError -> one red line (traceback only with --debug)."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except AgoraError as e:
            if state["debug"]:
                raise
            # The message is data (it may hold YAML paths like members[1]): never parse it as markup.
            err_console.print(Text("error: ", style="red") + Text(str(e)), soft_wrap=True)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/yellow]")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
) -> None:
    state["debug"] = debug


def is_tty() -> bool:
    return sys.stdout.isatty()
