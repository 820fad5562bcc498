"""`agora serve CONFIG`: start the servers a config needs and keep them up until Ctrl-C."""

from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import typer

from agora_cli import runlock
from agora_cli.cli.app import app, console, is_tty
from agora_cli.config import Config, load_config
from agora_cli.events import EventBus, JsonlSink
from agora_cli.paths import RunPaths
from agora_cli.ui.plain import PlainPrinter
from agora_cli.ui.progress import ProgressBars


@app.command()
def serve(
    config: str = typer.Argument(..., help="YAML config, e.g. configs/tiny.yaml."),
    overrides: list[str] = typer.Argument(None, help="key=value overrides"),
    run_dir: Path = typer.Option(
        None, "--run-dir", help="Run directory for logs and servers.json (default runs/<name>)."
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print the server commands and URLs; start nothing."
    ),
    stop: bool = typer.Option(
        False,
        "--stop",
        help="End the Ray replicas a killed `agora serve` left for this run (refused while an "
        "agora serve or run holds it); start nothing.",
    ),
) -> None:
    """Serve every member; `agora run|models ping --run-dir DIR` attach to these servers."""
    from agora_cli.serving import Serving

    cfg = load_config(config, overrides or [])
    paths = RunPaths(run_dir or cfg.resolved_run_dir())
    if dry_run:
        for line in Serving(cfg, paths).describe():
            console.print(line, markup=False, highlight=False, soft_wrap=True)
        return
    if stop:
        with runlock.hold(paths.root, name=runlock.SERVE_LOCK), runlock.hold(paths.root):
            _end_left(cfg, paths)
        return
    with runlock.hold(paths.root, name=runlock.SERVE_LOCK):
        _serve(cfg, paths)


def _end_left(cfg: Config, paths: RunPaths) -> None:
    from agora_cli.serving import Serving

    ended = Serving(cfg, paths).end_left()
    for backend, names in ended.items():
        console.print(
            f"{backend}: ended {len(names)} replica(s): {', '.join(names)}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    if not ended:
        where = (
            "on the Ray cluster"
            if cfg.cluster is not None
            else "(no cluster: servers on one machine stop with the agora that started them)"
        )
        console.print(
            f"no replicas of {paths.root} left {where}", markup=False, highlight=False, soft_wrap=True
        )


def _serve(cfg: Config, paths: RunPaths) -> None:
    from agora_cli.serving import Serving

    paths.logs.mkdir(parents=True, exist_ok=True)
    sink = JsonlSink(paths.logs / "serve-events.jsonl")
    # Each server's start (and readiness, with its elapsed time) as a bar, or a line when piped.
    view: Any = ProgressBars(console) if is_tty() else nullcontext()
    serving = Serving(cfg, paths, EventBus([sink, view if is_tty() else PlainPrinter()]))
    with view:
        serving.start()
    try:
        if serving.attached:
            console.print(
                f"servers for {paths.root} are already up (see {paths.servers})",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
            return
        serving.write_servers_file()
        for line in serving.describe():
            console.print(line, markup=False, highlight=False, soft_wrap=True)
        for m in cfg.members:
            ep = serving.endpoint(m.name)
            console.print(
                f"{m.name}: {ep.base_url}  model={ep.model}", markup=False, highlight=False, soft_wrap=True
            )
        console.print(
            f"wrote {paths.servers}; logs in {paths.logs}. Ctrl-C stops the servers.",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        while True:
            time.sleep(1)
    finally:
        serving.stop()
        sink.close()
