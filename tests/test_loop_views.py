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
    console = Console(record=True, width=160, file=io.StringIO())
    console.print(render(state))
    text = console.export_text()
    assert "step t=0 (of 2 steps)" in text
    # V_t = 3 of 4 solutions validated, with its 95% Wilson interval
    assert "V_t 0.750 [0.301, 0.954] (3/4)" in text
    assert "V_target 0.500" in text and "buffer 2/16" in text
    row = next(line for line in text.splitlines() if "alpha" in line and "29.40" in line)
    # mu, sigma, solutions, validated, pass rate (3/4, 95% Wilson), buffer share, tokens/s
    # (50 tok / 2 s), adapter
    for cell in ("29.40", "7.10", "75% [30-95]", "100%", "25.0", "v2"):
        assert cell in row
    assert "3/6" in text  # solve progress
    assert "ETA 0:00:12" in text  # one step left at 12 s per step
    # 2 samples in 12 s of step wall time: 600/h; 14 more to the threshold take 84 s.
    assert (
        "validated 600.0/h (2 in 1 step(s), 12 s step wall time); buffer threshold 16: "
        "14 to go, ~0:01:24 at that rate"
    ) in text


def test_plain_printer_one_line_per_committed_step():
    out = io.StringIO()
    printer = PlainPrinter(out)
    for e in events():
        printer(e)
    lines = out.getvalue().splitlines()
    assert lines[0] == "starting run runs/x at step 0"
    assert lines[1] == "adapter live: alpha v2"
    assert lines[2].startswith("step 0 | d 1.000->1.010 | V 0.750 [0.301, 0.954] (3/4) tgt 0.500")
    assert "buffer 2/16" in lines[2] and "alpha:29.4" in lines[2]
    assert len(lines) == 3  # request/phase/rating events print nothing
