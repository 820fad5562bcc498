"""The Typer app, and the one place where an expected failure becomes a red line and an exit code.

Commands raise; `_AgoraGroup.invoke` (the root of every command, sub-groups included) renders:

- `AgoraError` (the library's typed errors): its message, its `exit_code`;
- `sqlite3.Error` (e.g. "database is locked"), `OSError` (disk full, permission): what failed and
  what to do, exit 1;
- an `ExceptionGroup` (the step's TaskGroup): unwrapped to its leaves, the first one rendered
  (with how many more there were) when every leaf is expected;
- `KeyboardInterrupt`: "interrupted", exit 130.

Each as ONE line on stderr, the text printed as plain text (never Rich markup: messages hold
paths and YAML keys like `members[1]`). `agora --debug ...` re-raises instead, with the
traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import sqlite3
import sys
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperGroup

from agora_cli.errors import AgoraError

if TYPE_CHECKING:
    # typer carries its own copy of click and types `invoke`'s context with it; the name is
    # private, so it is imported for the type checker only.
    from typer._click import Context as ClickContext

EXPECTED = (AgoraError, sqlite3.Error, OSError)
INTERRUPTED = 130


def leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, in order; `exc` itself when not a group."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for e in exc.exceptions for leaf in leaves(e)]
    return [exc]


def describe(exc: BaseException) -> tuple[str, int]:
    """(one line, exit code) for an expected failure."""
    if isinstance(exc, AgoraError):
        return str(exc), exc.exit_code
    if isinstance(exc, sqlite3.Error):
        text = str(exc)
        if "locked" in text or "busy" in text:
            return (
                f"the run store is busy: {text}; another process holds a write lock on it "
                "for too long; stop it, then re-run the same command to resume"
            ), 1
        return f"run store: {type(exc).__name__}: {text}", 1
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if exc.filename else ""
        reason = exc.strerror or str(exc) or type(exc).__name__
        hint = {
            errno.ENOSPC: "free some disk space, then re-run the same command to resume",
            errno.EDQUOT: "free some disk quota, then re-run the same command to resume",
            errno.EACCES: "check the permissions of that path",
            errno.EPERM: "check the permissions of that path",
            errno.EROFS: "use a writable run directory (--run-dir)",
        }.get(exc.errno or 0, "see the path and re-run with --debug for the traceback")
        return f"{reason}{where}; {hint}", 1
    raise TypeError(exc)  # pragma: no cover - only called on EXPECTED


def render(exc: BaseException) -> int | None:
    """Print the failure as one line on stderr and return the exit code; None when it is not an
    expected failure (a bug: the caller re-raises it)."""
    found = leaves(exc)
    if any(isinstance(e, KeyboardInterrupt) for e in found):
        err_console.print(Text("interrupted", style="yellow"))
        return INTERRUPTED
    if not all(isinstance(e, EXPECTED) for e in found):
        return None
    line, code = describe(found[0])
    if len(found) > 1:
        line += f" (and {len(found) - 1} more error(s); --debug shows all)"
    # Newlines inside a message (e.g. ConfigError's list) are kept: they are the message's own.
    err_console.print(Text("error: ", style="red") + Text(line), soft_wrap=True, markup=False)
    return code


class _AgoraGroup(TyperGroup):
    """The root group: every command's failure goes through `render` here, once."""

    def invoke(self, ctx: ClickContext) -> Any:
        try:
            return super().invoke(ctx)
        except BaseException as e:  # noqa: BLE001 - rendered or re-raised below
            # typer's own control flow (Exit, Abort, usage errors) is not an expected failure, so
            # `render` returns None for it and it goes on to typer unchanged.
            if state["debug"] or isinstance(e, SystemExit | GeneratorExit):
                raise
            code = render(e)
            if code is None:
                raise
            raise typer.Exit(code) from None


app = typer.Typer(
    name="agora",
    cls=_AgoraGroup,
    help="AGORA group distillation (arXiv 2507.21166) on your own ensemble of small models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Piped or redirected output (a log file, `| less`) gets 160 columns instead of rich's 80, so the
# status tables (rates with their intervals) do not wrap; a terminal keeps its own width.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True)
state: dict[str, Any] = {"debug": False}


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
) -> None:
    state["debug"] = debug


def is_tty() -> bool:
    return sys.stdout.isatty()
