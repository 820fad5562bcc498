"""Progress bars for the commands besides `run`: each server's start (`agora serve`, `agora
eval`) and one bar per member and benchmark (`agora eval`).

An EventBus sink like the live view (it reads `server_starting`, `server_started`,
`phase_started` with phase "evaluate" and `eval_progress`); the plain printer (ui/plain.py) gives
the same facts as lines when stdout is not a terminal.
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from agora_cli.events import Event


class ProgressBars:
    """Rich progress bars fed by events: `bus.add(view)` then `with view: ...`."""

    def __init__(self, console: Console | None = None):
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
        )
        self._tasks: dict[tuple[str, str], TaskID] = {}

    def __call__(self, e: Event) -> None:
        kind = e["kind"]
        if kind == "server_starting":
            key = ("server", f"{e.get('backend')} {e.get('model')}")
            self._tasks[key] = self.progress.add_task(f"server {key[1]}: starting", total=None)
        elif kind == "server_started":
            key = ("server", f"{e.get('backend')} {e.get('model')}")
            if key in self._tasks:
                self.progress.update(
                    self._tasks[key], description=f"server {key[1]}: ready", total=1, completed=1
                )
        elif kind == "phase_started" and e.get("phase") == "evaluate":
            for row in e.get("totals") or []:
                key = (row["member"], row["benchmark"])
                self._tasks[key] = self.progress.add_task(
                    f"{row['member']} {row['benchmark']}", total=row["total"]
                )
        elif kind == "eval_progress":
            task = self._tasks.get((e["member"], e["benchmark"]))
            if task is not None:
                self.progress.update(task, completed=e["done"])

    def __enter__(self) -> ProgressBars:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()
