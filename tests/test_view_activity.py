"""The live view and `agora run` never show a stale or silent screen: servers starting with their
elapsed time, each member's training progress, an ETA that counts down with the clock between
commits, the wait for the last round named, and `--steps 0` starting nothing."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

from agora_cli.cli import app
from agora_cli.events import read_events
from agora_cli.paths import RunPaths
from agora_cli.ui.live import LiveState, render

pytestmark = pytest.mark.unit


def text(state: LiveState, now: float) -> str:
    console = Console(record=True, width=400, file=io.StringIO())
    console.print(render(state, now))
    return console.export_text()


def feed(state: LiveState, *events: dict) -> None:
    for e in events:
        state.apply(e)


def test_servers_starting_show_their_elapsed_time_until_ready():
    s = LiveState()
    feed(s, {"t": 100.0, "kind": "server_starting", "backend": "gpu", "model": "smol", "url": "http://h:1"})
    assert "server gpu smol: starting, loading the model (42 s)" in text(s, now=142.0)
    feed(s, {"t": 161.5, "kind": "server_started", "backend": "gpu", "model": "smol", "url": "http://h:1"})
    shown = text(s, now=162.0)
    assert "server gpu smol: ready after 61.5 s" in shown and "loading" not in shown


def test_training_rounds_show_each_members_progress_then_the_swap():
    s = LiveState()
    feed(
        s,
        {"t": 1.0, "kind": "training_started", "round": 2, "member": "alpha", "version": 2, "rows": 8},
        {"t": 2.0, "kind": "training_progress", "round": 2, "member": "alpha", "step": 0},  # memory plan
        {"t": 3.0, "kind": "training_progress", "round": 2, "member": "alpha", "step": 3, "total_steps": 8}
        | {"loss": 1.23456, "tokens_per_s": 512.0},
    )
    assert "training round 2 alpha: training, step 3/8, loss 1.2346, 512 tok/s" in text(s, now=3.0)
    feed(s, {"t": 4.0, "kind": "adapter_live", "member": "alpha", "version": 2, "latency_s": 0.25})
    shown = text(s, now=4.0)
    assert "training round 2 alpha" not in shown
    assert "adapter swap: alpha v2 live after 0.25 s" in shown


def test_eta_counts_down_with_the_clock_and_names_the_wait_after_the_last_step():
    s = LiveState()
    feed(
        s,
        {"t": 0.0, "kind": "run_started", "run_dir": "r", "step": 0, "steps_target": 2, "threshold": 4},
        {"t": 0.0, "kind": "step_started", "step": 0, "d": 1.0},
        {"t": 100.0, "kind": "step_committed", "step": 0, "d": 1.0, "d_next": 1.05, "wall_s": 100.0},
        {"t": 100.0, "kind": "step_started", "step": 1, "d": 1.05},
    )
    assert "ETA 0:01:40" in text(s, now=100.0)
    assert "ETA 0:01:10" in text(s, now=130.0)  # 30 s into the last step
    feed(
        s,
        {"t": 200.0, "kind": "step_committed", "step": 1, "d": 1.05, "d_next": 1.1, "wall_s": 100.0},
        {"t": 200.0, "kind": "training_wait", "round": 3, "workers": {"alpha": 9}},
    )
    shown = text(s, now=260.0)
    assert "ETA steps done; waiting for training round 3 to go live" in shown
    assert "ETA 0:00:00" not in shown


def test_steps_0_starts_no_server(tmp_path: Path):
    """A server that is not there would fail the run after its start timeout: `--steps 0` (or
    a run that has its steps) must not try."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "name": "nothing",
                "backends": {
                    "gpu": {
                        "kind": "sglang",
                        "launch": False,
                        "urls": {"org/m": "http://127.0.0.1:9"},
                        "startup_timeout_s": 1,
                    }
                },
                "members": [{"name": n, "model": "org/m", "backend": "gpu"} for n in ("a", "b")],
                "ablations": {"lora": False},
            }
        )
    )
    run_dir = tmp_path / "run"
    res = CliRunner().invoke(app, ["run", str(cfg), "--steps", "0", "--run-dir", str(run_dir)])
    assert res.exit_code == 0, res.output
    assert "nothing to do: 0 step(s) already committed (--steps 0); no server was started" in res.output
    kinds = [e["kind"] for e in read_events(RunPaths(run_dir).events)]
    assert "server_starting" not in kinds and "server_started" not in kinds


def test_the_live_view_draws_nothing_before_the_first_event():
    """A lock or config error raised before the run emits anything is printed alone: no empty
    view is drawn above it."""
    from agora_cli.ui.live import LiveView

    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120)
    with pytest.raises(RuntimeError), LiveView(console):
        raise RuntimeError("the run directory is locked")
    assert out.getvalue() == ""
    view = LiveView(console)
    with view:
        view({"t": 1.0, "kind": "run_started", "run_dir": "runs/x", "step": 0})
    assert "runs/x" in out.getvalue()
