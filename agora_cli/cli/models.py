"""`agora models prepare|list|ping`: model weights and a quick end-to-end check of every member."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table
from rich.text import Text

from agora_cli.cli.app import app, console
from agora_cli.config import Config, Sampling, load_config
from agora_cli.paths import RunPaths

if TYPE_CHECKING:  # serving starts heavy imports; the command imports it when it runs
    from agora_cli.client import ChatResult
    from agora_cli.serving import Serving

models_app = typer.Typer(help="Prepare, list and ping the ensemble's models.", no_args_is_help=True)
app.add_typer(models_app, name="models")

PING_PROMPT = "What is 2 + 3? Answer with one number."


@models_app.command("prepare")
def prepare_cmd(
    config: str = typer.Argument(..., help="YAML config, e.g. configs/tiny.yaml."),
    overrides: list[str] = typer.Argument(None, help="key=value overrides"),
) -> None:
    """De-quantise every member's GGUF once into the model cache (reused afterwards)."""
    from agora_cli.models import prepare_member

    cfg = load_config(config, overrides or [])
    table = Table("member", "source", "prepared", "status", "seconds")
    for m in cfg.members:
        if cfg.backend_of(m).kind == "openai":
            table.add_row(m.name, m.model, "-", "remote", "-")
            continue
        with console.status(f"preparing {m.name} ({m.model})"):
            r = prepare_member(m)
        status = {"hub": "hub id", "dir": "directory"}.get(r.source.kind, "cached")
        if r.source.kind == "gguf" and not r.cached:
            status = "converted"
        table.add_row(m.name, m.model, str(r.path), status, f"{r.seconds:.1f}")
    console.print(table)


@models_app.command("list")
def list_cmd() -> None:
    """Prepared models in the cache (`$AGORA_HOME/models`)."""
    from agora_cli.models import list_cached
    from agora_cli.paths import models_cache

    rows = list_cached()
    if not rows:
        console.print(f"no prepared models in {models_cache()}")
        return
    table = Table("name", "source", "architecture", "size MB", "prepared at", "complete")
    for r in rows:
        table.add_row(
            r["name"],
            r["source"] or "?",
            r["architecture"] or "?",
            f"{r['size_mb']:.0f}",
            r["prepared_at"] or "-",
            "yes" if r["complete"] else "no (ignored)",
        )
    console.print(table)
    console.print(f"cache: {models_cache()}", highlight=False)


@models_app.command("ping")
def ping_cmd(
    config: str = typer.Argument(..., help="YAML config, e.g. configs/tiny.yaml."),
    overrides: list[str] = typer.Argument(None, help="key=value overrides"),
    run_dir: Path = typer.Option(
        None, "--run-dir", help="Attach to `agora serve --run-dir DIR` (default runs/<name>)."
    ),
    max_tokens: int = typer.Option(16, "--max-tokens", help="Length of each reply."),
) -> None:
    """Start (or attach to) the servers and send one short chat to every member concurrently."""
    from agora_cli.serving import Serving

    cfg = load_config(config, overrides or [])
    paths = RunPaths(run_dir or cfg.resolved_run_dir())
    with console.status("starting servers"), Serving(cfg, paths) as serving:
        rows = asyncio.run(_ping(cfg, serving, max_tokens))
        attached = serving.attached
    table = Table("member", "backend", "model", "latency s", "tokens", "reply")
    for name, backend, model, result in rows:
        # gather() hands back a cancelled request as CancelledError, a BaseException.
        if isinstance(result, BaseException):
            # Exception text is data (brackets, paths): a Text, never parsed as markup.
            table.add_row(
                name,
                backend,
                model,
                "-",
                "-",
                Text(f"{type(result).__name__}: {str(result)[:80]}", style="red"),
            )
        else:
            reply = " ".join(result.text.split())[:60]
            table.add_row(
                name, backend, model, f"{result.latency_s:.2f}", str(result.completion_tokens), reply
            )
    console.print(table)
    console.print("attached to running servers" if attached else "servers stopped")
    failed = [r for r in rows if isinstance(r[3], BaseException)]
    if failed:
        raise typer.Exit(1)


async def _ping(
    cfg: Config, serving: Serving, max_tokens: int
) -> list[tuple[str, str, str, ChatResult | BaseException]]:
    pool = serving.client_pool()
    sampling = Sampling(temperature=0.0, top_p=1.0, max_tokens=max_tokens)
    messages = [{"role": "user", "content": PING_PROMPT}]
    try:
        results = await asyncio.gather(
            *(pool.chat(m.name, messages, sampling, role="ping") for m in cfg.members),
            return_exceptions=True,
        )
    finally:
        await pool.aclose()
    return [
        (m.name, m.backend, _short(serving.endpoint(m.name).model), r)
        for m, r in zip(cfg.members, results, strict=True)
    ]


def _short(model: str) -> str:
    """Served model names are often absolute paths: keep the last two components."""
    if model.startswith("/"):
        return "/".join(Path(model).parts[-2:])
    return model
