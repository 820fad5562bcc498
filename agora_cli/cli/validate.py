"""`agora validate CONFIG [key=value ...]`: every problem with its YAML path, exit 2 if any.

With `--gpu-memory GB` (or on a machine with CUDA) the GPU memory plan is checked too
(`config/gpu.py`): a server or trainer that does not fit is a config error.

A valid config can still carry warnings (exit 0): a member whose configured training batch does
not fit the memory budget on this machine even with gradient checkpointing; members that share a
base model and train on the same buffer rows (only their training seeds keep them apart); an
installed SGLang with known holes, or a server reached off this machine without a key
(`serving/keys.py`).
"""

from __future__ import annotations

import typer
from rich.text import Text

from agora_cli.cli.app import app, console
from agora_cli.config import Config, load_config


def protocol_notes(cfg: Config) -> list[str]:
    """What a valid protocol section will (not) do that its fields alone do not say."""
    if cfg.protocol.problem_source != "seed_pool":
        return []
    return [
        f"protocol.problem_source is seed_pool: each step solves "
        f"{cfg.protocol.problems_per_step} problems drawn from the seed pool "
        f"{cfg.protocol.seed_pool!r} by (seed, step, slot) alone and nothing is generated; "
        "d_t is still recorded but steers nothing (the difficulty control is inert)"
    ]


def shared_base_warnings(cfg: Config) -> list[str]:
    """Members on one base model that train on the same rows (AGORA trains every member on the
    whole buffer): only their training seeds keep their adapters apart."""
    if not cfg.ablations.lora or cfg.protocol.mode == "isolated":
        return []  # no training, or each member trains on its own solutions only
    by_base: dict[str, list[str]] = {}
    for m in cfg.members:
        by_base.setdefault(m.model, []).append(m.name)
    return [
        f"members {', '.join(names)} share the base model {base!r} and train on the same buffer "
        "rows: each trains with its own seed (from the run's seed and its name), so their adapters "
        "start and shuffle differently, but the group's diversity between them comes from those "
        "draws alone"
        for base, names in by_base.items()
        if len(names) > 1
    ]


@app.command()
def validate(
    config: str = typer.Argument(..., help="YAML config to check."),
    overrides: list[str] = typer.Argument(None, help="key=value overrides, e.g. protocol.elite_k=5"),
    gpu_memory: float | None = typer.Option(
        None,
        "--gpu-memory",
        help="GiB of each GPU to plan the servers and trainer for (default: CUDA device 0's, if any).",
    ),
) -> None:
    """Check a config (and overrides) without running anything."""
    from agora_cli.protocol.prompts import prompt_set_note
    from agora_cli.serving.gpu_check import check_gpu_memory
    from agora_cli.serving.keys import security_warnings
    from agora_cli.training.memory import config_memory_report
    from agora_cli.training.trainer import resolve_precision

    cfg = load_config(config, overrides or [])
    plan_lines = check_gpu_memory(cfg, config, gpu_memory)
    console.print(
        f"[green]ok[/green] {config}: {len(cfg.members)} members "
        f"({', '.join(m.name for m in cfg.members)}), backends: {', '.join(cfg.backends)}"
    )
    console.print(Text("note: ", style="dim") + Text(prompt_set_note(cfg.prompts_dir)), soft_wrap=True)
    device, amp = resolve_precision(cfg.training.precision)  # this machine's trainer
    warnings, notes = config_memory_report(cfg, device=device, half_precision=amp is not None)
    for line in [*protocol_notes(cfg), *plan_lines, *notes]:
        console.print(Text("note: ", style="dim") + Text(line), soft_wrap=True)
    for line in [*shared_base_warnings(cfg), *warnings, *security_warnings(cfg)]:
        console.print(Text("warning: ", style="yellow") + Text(line), soft_wrap=True)
