"""The live view and the plain printer are folds over events: feed events, read the text."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from agora_cli.events import EventBus
from agora_cli.ui.live import LiveState, render
from agora_cli.ui.plain import PlainPrinter

pytestmark = pytest.mark.unit


def events() -> list[dict]:
    bus = EventBus()
    out: list[dict] = []
    bus.add(out.append)
    members = {
        "alpha": {"mu": 25.0, "sigma": 8.333, "solutions": 0, "validated": 0, "buffered": 0, "version": 0}
    }
    bus.emit("run_started", run_dir="runs/x", step=0, steps_target=2, threshold=16, buffer=0, members=members)
    bus.emit("step_started", step=0, d=1.0, v_target=0.5, strategy="balanced")
    bus.emit("phase_progress", phase="solve", step=0, done=3, total=6)
    bus.emit(
        "request_done",
        member="alpha",
        role="solve",
        ok=True,
        latency_s=2.0,
        prompt_tokens=10,
        completion_tokens=50,
    )
    bus.emit("rating_update", member="alpha", mu=29.4, sigma=7.1)
    bus.emit("adapter_live", member="alpha", version=2, model_name="m")
    members["alpha"].update(mu=29.4, sigma=7.1, solutions=4, validated=3, buffered=2, version=2)
    bus.emit("buffer_size", size=2, threshold=16, unconsumed=2)
    bus.emit(
        "step_committed",
        step=0,
        d=1.0,
        d_next=1.01,
        v_t=0.75,
        v_target=0.5,
        f_t=None,
        strategy="balanced",
        wall_s=12.0,
        request_s=40.0,
        buffer=2,
        unconsumed=2,
        threshold=16,
        members=members,
        n_problems=2,
        n_solutions=4,
        n_correct=3,
        n_buffered=2,
    )
    return out


def test_live_view_shows_header_members_and_phases():
    state = LiveState()
    for e in events():
        state.apply(e)
    console = Console(record=True, width=400, file=io.StringIO())  # one header line per line
    console.print(render(state))
    text = console.export_text()
    assert "step t=0 (of 2 steps)" in text
    # V_t = 3 of 4 solutions validated, with its 95% Wilson interval
    assert "consensus approval V_t 0.750 [0.301, 0.954] (3/4)" in text
    assert "V_target 0.500" in text and "buffer untrained 2/16 (2 buffered in total)" in text
    assert "d_t 1.000  d_{t+1} 1.010" in text  # each under its own name after the commit
    row = next(line for line in text.splitlines() if "alpha" in line and "29.40" in line)
    # mu, sigma, solutions, validated, pass rate (3/4, 95% Wilson), buffer share, tokens/s
    # (50 tok / 2 s), adapter
    for cell in ("29.40", "7.10", "75% [30-95]", "100%", "25.0", "v2"):
        assert cell in row
    assert "3/6" in text  # solve progress
    assert "ETA 0:00:12" in text  # one step left at 12 s per step
    # 2 samples in 12 s of step wall time: 600/h; 14 more to the threshold take 84 s.
    assert (
        "validated 900.0/h (passed consensus), buffered 600.0/h (entered the buffer) (3 validated, "
        "2 buffered in 1 step(s), 12 s step wall time); buffer threshold 16: 14 untrained rows to "
        "go, ~0:01:24 at the buffered rate"
    ) in text
    assert "q drop: its generated problems dropped" in text  # the column legend


def test_plain_printer_one_line_per_committed_step():
    out = io.StringIO()
    printer = PlainPrinter(out)
    for e in events():
        printer(e)
    lines = out.getvalue().splitlines()
    assert lines[0] == "starting run runs/x at step 0"
    assert lines[1] == "adapter swap: alpha v2 live after - s"
    assert lines[2].startswith(
        "step 0 | d_t 1.000 d_t+1 1.010 | approval 0.750 [0.301, 0.954] (3/4) tgt 0.500"
    )
    assert "buffer untrained 2/16, total 2" in lines[2] and "alpha:29.4" in lines[2]
    assert len(lines) == 3  # request/phase/rating events print nothing
